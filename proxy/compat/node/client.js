#!/usr/bin/env node
// rdmq compatibility fixture: the official RocketMQ 5 Node.js gRPC client
// (npm rocketmq-client-nodejs@1.0.8). Plaintext, no credentials.
//
//   node client.js produce <endpoint> <topic> <sizes> <prefix>
//   node client.js consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>
//
// stdout carries only the contract lines (SENT / RECEIVED / TOTAL); the client's own log goes to
// stderr (a logger is passed in, so nothing is written to ~/logs/rocketmq/).
// Exit status: 0 success, 1 error (an `ERROR <text>` line on stderr), 2 usage.
// A watchdog bounds the whole program (HARD_LIMIT_MS) so it never outlives the test.
'use strict';

const crypto = require('node:crypto');
const util = require('node:util');
const { Producer, SimpleConsumer, FilterExpression } = require('rocketmq-client-nodejs');

const HARD_LIMIT_MS = 85000; // whole-program bound (the contract says 90 s)
const CONSUME_LIMIT_MS = 60000; // give up receiving after this long
const AWAIT_MS = 5000; // long-polling duration
const START_LIMIT_MS = 20000; // startup waits for the Telemetry settings reply with no deadline of its own
const BATCH = 16;
const UNICODE_VALUE = 'h\u00e9llo \u2603'; // "héllo ☃"

function log(...args) {
  process.stderr.write(util.format(...args) + '\n');
}

// The library's ILogger; everything to stderr. RDMQ_COMPAT_QUIET=1 keeps only warnings and errors.
const quiet = process.env.RDMQ_COMPAT_QUIET === '1';
const stderrLogger = {
  info: (...a) => { if (!quiet) log('[rocketmq info]', util.format(...a)); },
  warn: (...a) => log('[rocketmq warn]', util.format(...a)),
  error: (...a) => log('[rocketmq error]', util.format(...a)),
  debug: () => {},
  close: () => {},
};

function errorText(e) {
  if (!(e instanceof Error)) return String(e);
  let text = `${e.name}: ${e.message}`;
  let cause = e.cause;
  while (cause) {
    text += ` (cause: ${cause instanceof Error ? cause.message : String(cause)})`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return text;
}

function die(text, code = 1) {
  process.stderr.write('ERROR ' + String(text).replace(/\s+/g, ' ') + '\n');
  process.exit(code);
}

function out(line) {
  // Synchronous for pipes and files on Linux, so nothing is lost at process.exit().
  process.stdout.write(line + '\n');
}

function bodyFor(i, size) {
  const body = Buffer.allocUnsafe(size);
  for (let j = 0; j < size; j++) body[j] = (j * 7 + i * 13) % 256;
  return body;
}

function baseOptions(endpoint) {
  return {
    endpoints: endpoint,
    namespace: '',
    sslEnabled: false,
    // no sessionCredentials: no signature is sent
    requestTimeout: 3000,
    logger: stderrLogger,
  };
}

// Resolve or reject like `promise`, or reject after `ms`.
function bounded(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
  });
  return Promise.race([ promise, timeout ]).finally(() => clearTimeout(timer));
}

async function shutdownQuietly(client) {
  try {
    await bounded(client.shutdown(), 10000, 'shutdown'); // sends NotifyClientTermination to every route endpoint
  } catch (e) {
    log('shutdown failed:', errorText(e));
  }
}

async function produce(endpoint, topic, sizes, prefix) {
  const producer = new Producer({ ...baseOptions(endpoint), topics: [ topic ] });
  let started = false;
  try {
    // Waits for the route AND the first Telemetry settings reply from the server.
    await bounded(producer.startup(), START_LIMIT_MS, 'producer startup');
    started = true;
    for (let i = 0; i < sizes.length; i++) {
      const receipt = await producer.send({
        topic,
        body: bodyFor(i, sizes[i]),
        tag: `tag-${prefix}`,
        keys: [ `key-${prefix}-${i}`, `alt-${prefix}-${i}` ],
        properties: new Map([
          [ 'index', String(i) ],
          [ 'prefix', prefix ],
          [ 'unicode', UNICODE_VALUE ],
        ]),
      });
      out(`SENT ${i} ${receipt.messageId}`);
    }
  } catch (e) {
    if (started) await shutdownQuietly(producer);
    die(`produce failed: ${errorText(e)}`);
  }
  await shutdownQuietly(producer);
  return 0;
}

function describe(m) {
  const body = m.body || Buffer.alloc(0);
  const props = {};
  for (const [ k, v ] of m.properties) props[k] = v;
  return {
    id: m.messageId,
    // google-protobuf returns '' / 0 for unset optional fields: map those to null.
    tag: m.tag ? m.tag : null,
    keys: [ ...(m.keys || []) ].sort(),
    props,
    size: body.length,
    sha256: crypto.createHash('sha256').update(body).digest('hex'),
    attempt: m.deliveryAttempt ? m.deliveryAttempt : null,
    topic: m.topic,
  };
}

async function consume(endpoint, topic, group, count, ack, invisibleSecs) {
  const consumer = new SimpleConsumer({
    ...baseOptions(endpoint),
    consumerGroup: group,
    subscriptions: new Map([ [ topic, new FilterExpression('*') ] ]),
    awaitDuration: AWAIT_MS,
  });
  let got = 0;
  let started = false;
  const deadline = Date.now() + CONSUME_LIMIT_MS;
  try {
    await bounded(consumer.startup(), START_LIMIT_MS, 'consumer startup');
    started = true;
    while (got < count) {
      if (Date.now() >= deadline) {
        throw new Error(`received ${got} of ${count} messages within ${CONSUME_LIMIT_MS / 1000} s`);
      }
      // receive(maxMessageNum, invisibleDuration in MILLISECONDS)
      const messages = await consumer.receive(BATCH, invisibleSecs * 1000);
      for (const m of messages) {
        out('RECEIVED ' + JSON.stringify(describe(m)));
        got++;
        if (ack) await consumer.ack(m);
      }
    }
  } catch (e) {
    if (started) await shutdownQuietly(consumer);
    die(`consume failed after ${got} messages: ${errorText(e)}`);
  }
  await shutdownQuietly(consumer);
  out(`TOTAL ${got}`);
  return 0;
}

const USAGE = 'usage: node client.js produce <endpoint> <topic> <sizes> <prefix>\n' +
  '       node client.js consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>';

function parseIntStrict(s, what) {
  if (!/^[0-9]+$/.test(s)) throw new Error(`${what} must be a non-negative integer, got '${s}'`);
  return Number(s);
}

function parse(argv) {
  if (argv.length === 5 && argv[0] === 'produce') {
    const [ , endpoint, topic, sizesArg, prefix ] = argv;
    const sizes = sizesArg.split(',').filter(s => s.trim() !== '').map(s => parseIntStrict(s.trim(), 'size'));
    if (sizes.length === 0 || sizes.some(s => s <= 0)) {
      throw new Error(`sizes must be a comma list of positive integers, got '${sizesArg}'`);
    }
    return () => produce(endpoint, topic, sizes, prefix);
  }
  if (argv.length === 7 && argv[0] === 'consume') {
    const [ , endpoint, topic, group, countArg, mode, invArg ] = argv;
    const count = parseIntStrict(countArg, 'count');
    const invisible = parseIntStrict(invArg, 'invisible_secs');
    if (mode !== 'ack' && mode !== 'noack') throw new Error(`mode must be ack or noack, got '${mode}'`);
    if (invisible <= 0) throw new Error('invisible_secs must be > 0');
    return () => consume(endpoint, topic, group, count, mode === 'ack', invisible);
  }
  throw new Error(argv.join(' '));
}

function main() {
  const watchdog = setTimeout(() => die(`timeout: program ran longer than ${HARD_LIMIT_MS / 1000} s`), HARD_LIMIT_MS);
  watchdog.unref();
  process.on('unhandledRejection', e => die(`unhandled rejection: ${errorText(e)}`));
  process.on('uncaughtException', e => die(`uncaught exception: ${errorText(e)}`));
  let run;
  try {
    run = parse(process.argv.slice(2));
  } catch (e) {
    log(USAGE);
    die(`bad arguments: ${e.message}`, 2);
  }
  // The client keeps gRPC channels and timers around; leave explicitly once done.
  run().then(rc => process.exit(rc), e => die(errorText(e)));
}

main();
