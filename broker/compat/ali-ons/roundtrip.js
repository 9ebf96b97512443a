// Compatibility fixture for rdmq-broker: the npm client ali-ons 3.12.0 produces a set of messages
// and then consumes them back with its own PULL-based push consumer.
//
//   node roundtrip.js <broker host:port> <topic> <count> <run-id>
//
// The broker address is given as the name server: ali-ons asks it GET_ROUTEINFO_BY_TOPIC and then
// sends to the address in the route. Output, one line per event, for the Rust test to check:
//   SENT <i> <queueId> <queueOffset> <msgId>
//   RECEIVED <i> <queueId> <queueOffset> <tag> <rdmq-check property> <body as hex>
//   DONE <received count>
// Message i has body compat_body(run, "ali-ons", i), tag "t<i mod 3>", key "<run>-ali-ons-<i>" and
// the user property rdmq-check = "<run>/<i>". Exits non-zero on any failure or after 60 s.
'use strict';

const { Producer, Consumer, Message } = require('ali-ons');

const [addr, topic, countArg, run] = process.argv.slice(2);
if (!addr || !topic || !countArg || !run) {
  console.error('usage: node roundtrip.js <host:port> <topic> <count> <run-id>');
  process.exit(2);
}
const count = Number(countArg);

// Same formula as broker/tests/remoting_clients.rs: a text prefix, then (i * 7 + j) mod 256 bytes.
function compatBody(i) {
  const prefix = Buffer.from(`${run}/ali-ons/${i}/`);
  const tail = Buffer.alloc((i * 97) % 3000);
  for (let j = 0; j < tail.length; j++) tail[j] = (i * 7 + j) % 256;
  return Buffer.concat([prefix, tail]);
}

// ali-ons requires an httpclient for Aliyun address lookups; with nameSrv set it is never called.
const noLookups = { request: async () => { throw new Error('address lookups are not used'); } };
const common = { httpclient: noLookups, nameSrv: addr, accessKeyId: '', accessKeySecret: '', onsChannel: 'LOCAL' };

const deadline = setTimeout(() => {
  console.error('FAILED: timed out after 60 s');
  process.exit(1);
}, 60000);

async function produce() {
  const producer = new Producer({ ...common, producerGroup: `rdmq_compat_producer_${run}` });
  await producer.ready();
  for (let i = 0; i < count; i++) {
    const msg = new Message(topic, `t${i % 3}`, compatBody(i));
    msg.keys = [`${run}-ali-ons-${i}`];
    msg.properties['rdmq-check'] = `${run}/${i}`;
    const r = await producer.send(msg);
    if (r.sendStatus !== 'SEND_OK') throw new Error(`send ${i}: ${r.sendStatus}`);
    console.log('SENT', i, r.messageQueue.queueId, r.queueOffset, r.msgId);
  }
  await producer.close();
}

async function consume() {
  const consumer = new Consumer({
    ...common,
    consumerGroup: `rdmq_compat_consumer_${run}`,
    consumeFromWhere: 'CONSUME_FROM_FIRST_OFFSET',
    brokerSuspendMaxTimeMillis: 2000,
    consumerTimeoutMillisWhenSuspend: 10000,
  });
  const seen = new Set();
  await new Promise((resolve, reject) => {
    consumer.on('error', reject);
    consumer.subscribe(topic, '*', async msg => {
      const check = msg.properties['rdmq-check'] || '';
      if (!check.startsWith(`${run}/`)) return;
      const i = Number(check.slice(run.length + 1));
      console.log('RECEIVED', i, msg.queueId, msg.queueOffset, msg.tags, check, msg.body.toString('hex'));
      seen.add(i);
      if (seen.size === count) resolve();
    });
  });
  console.log('DONE', seen.size);
  await consumer.close();
}

(async () => {
  await produce();
  await consume();
  clearTimeout(deadline);
  process.exit(0);
})().catch(e => {
  console.error('FAILED', e && e.stack || e);
  process.exit(1);
});
