#!/usr/bin/env bash
# Runs a command in a qemu guest whose kernel has SoftRoCE (rdma_rxe), for hosts whose own
# kernel has none. The guest boots Debian's kernel (downloaded and unpacked, never installed),
# mounts the host's root read-only and this repository read-write (same path) over 9p, brings
# up rxe0 on a dummy netdev, runs the command there and returns its exit status (124: timed
# out, 125: the guest never reported). Non-interactive, no network card, bounded in time.
#
#   scripts/softroce-vm.sh [--timeout SECS] -- COMMAND [ARGS...]
#
# The command sees RDMQ_RDMA_DEVICE=rxe0, SOFTROCE_GUEST=1, SOFTROCE_DEV=rxe0 and
# SOFTROCE_IP=10.233.0.1, runs in the repository, with stdin from /dev/null.
set -euo pipefail

timeout_s=600
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--timeout SECS] -- COMMAND [ARGS...]" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${RDMQ_SOFTROCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rdmq-softroce}
mkdir -p "$cache"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
log() { printf '[softroce-vm] %s\n' "$*" >&2; }

# --- host packages ------------------------------------------------------------------------
install_packages() {
  local missing=()
  for p in busybox-static cpio kmod xz-utils iproute2 rdma-core ibverbs-utils ibverbs-providers \
           libibverbs1 librdmacm1 rdmacm-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v qemu-system-x86_64 >/dev/null; then
    # qemu-utils on these machines comes from bookworm-backports; bookworm's qemu-system
    # conflicts with it, so take qemu-system-x86 from backports too.
    if grep -q bookworm /etc/os-release && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
      log "adding bookworm-backports"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee /etc/apt/sources.list.d/rdmq-backports.sources >/dev/null
    fi
    $SUDO apt-get update -qq
    if grep -q bookworm /etc/os-release; then
      $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
    else
      $SUDO apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
    fi
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# --- guest kernel -----------------------------------------------------------------------------
fetch_kernel() {
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ]*-amd64' | head -1)
  [ -n "$pkg" ] || { log "cannot resolve linux-image-amd64"; exit 1; }
  kver=${pkg#linux-image-}
  kdir=$cache/$kver
  if [ ! -f "$kdir/ready" ]; then
    log "fetching kernel $pkg"
    rm -rf "$kdir"; mkdir -p "$kdir/root"
    local dl; dl=$(mktemp -d)
    (cd "$dl" && $SUDO apt-get download -o APT::Sandbox::User=root "$pkg" >/dev/null)
    dpkg-deb -x "$dl"/*.deb "$kdir/root"
    rm -rf "$dl"
    cp "$kdir/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
    # PVH boot: qemu starts the uncompressed ELF vmlinux directly (no real-mode loader, no
    # in-guest decompression): 7-12 s instead of 18-20 s per boot under TCG.
    local off
    off=$(LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a' "$kdir/vmlinuz" | head -1 | cut -d: -f1 || true)
    if [ -n "$off" ] && xz -dc --single-stream < <(tail -c +"$((off + 1))" "$kdir/vmlinuz") > "$kdir/vmlinux" 2>/dev/null \
       && head -c 4 "$kdir/vmlinux" | grep -q ELF; then
      log "extracted PVH vmlinux"
    else
      rm -f "$kdir/vmlinux"
      log "no vmlinux extracted; booting the bzImage"
    fi
    # Keep only the modules we need; the rest of the 400 MB tree goes.
    touch "$kdir/ready"
  fi
}

MODULES="virtio_pci virtio_rng 9pnet_virtio 9p dummy overlay crc32_generic crc32_pclmul rdma_rxe rdma_ucm ib_umad"

build_initramfs() {
  initrd=$kdir/initramfs.gz
  [ -f "$initrd" ] && [ "$initrd" -nt "$0" ] && return
  log "building initramfs"
  # The package ships no modules.dep (its postinst would make it): index the unpacked tree.
  [ -f "$kdir/root/lib/modules/$kver/modules.dep" ] || depmod -b "$kdir/root" "$kver"
  local w; w=$(mktemp -d)
  mkdir -p "$w"/{bin,sbin,proc,sys,dev,host,ovl,lib/modules/"$kver"}
  cp /bin/busybox "$w/bin/busybox"
  ln -s ../bin/busybox "$w/sbin/modprobe"
  local m line f
  for m in $MODULES; do
    while read -r line; do
      f=${line#insmod }; f=${f%% *}
      case "$f" in *.ko*) ;; *) continue ;; esac
      local rel=${f#"$kdir/root"}
      mkdir -p "$w/$(dirname "$rel")"
      case "$f" in
        *.ko.xz) xz -dc "$f" > "$w/${rel%.xz}" ;;
        *.ko.zst) zstd -qdc "$f" > "$w/${rel%.zst}" ;;
        *) cp "$f" "$w/$rel" ;;
      esac
    done < <(modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" 2>/dev/null || true)
  done
  for f in modules.order modules.builtin modules.builtin.modinfo; do
    [ -f "$kdir/root/lib/modules/$kver/$f" ] && cp "$kdir/root/lib/modules/$kver/$f" "$w/lib/modules/$kver/"
  done
  depmod -b "$w" "$kver"
  cat > "$w/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
stty -onlcr 2>/dev/null
for m in $MODULES; do modprobe \$m 2>/dev/null; done
o=trans=virtio,version=9p2000.L,msize=524288
mount -t 9p -o \$o,ro,cache=loose hostroot /host || { echo "9p host root mount failed"; poweroff -f; }
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm; mount -t devpts devpts /host/dev/pts; mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/tmp; mount -t tmpfs tmpfs /host/run
mount -t tmpfs tmpfs /ovl; mkdir -p /ovl/u /ovl/w
mount -t overlay overlay -o lowerdir=/host/root,upperdir=/ovl/u,workdir=/ovl/w /host/root
repo=\$(sed -n 's/.*rdmq.repo=\([^ ]*\).*/\1/p' /proc/cmdline)
# The repository may live under a directory the guest covers with a tmpfs (/tmp, /run).
mkdir -p /host\$repo 2>/dev/null
mount -t 9p -o \$o repo /host\$repo || echo "9p repo mount failed"
mkdir -p /host/tmp/rdmq-ctl; mount -t 9p -o \$o ctl /host/tmp/rdmq-ctl
chroot /host /bin/bash /tmp/rdmq-ctl/stage2.sh
poweroff -f
INIT
  chmod +x "$w/init"
  (cd "$w" && find . | cpio -o -H newc --quiet | gzip -9) > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$w"
}

install_packages
fetch_kernel
build_initramfs

ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
printf '%q ' "$@" > "$ctl/command"
cat > "$ctl/stage2.sh" <<STAGE2
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/root/.cargo/bin
export HOME=/root
ip link set lo up
ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy
ip addr add 10.233.0.1/24 dev dummy0
ip link set dummy0 up
rdma link add rxe0 type rxe netdev dummy0 || echo "rdma link add failed"
ulimit -l unlimited
export SOFTROCE_GUEST=1 SOFTROCE_DEV=rxe0 SOFTROCE_IP=10.233.0.1 RDMQ_RDMA_DEVICE=rxe0
cd "$repo"
echo "[guest] running: \$(cat /tmp/rdmq-ctl/command)"
bash -c "\$(cat /tmp/rdmq-ctl/command)" < /dev/null 2>&1 | cat
echo \${PIPESTATUS[0]} > /tmp/rdmq-ctl/status
sync
STAGE2

accel="tcg,thread=multi,tb-size=256"
if grep -qE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ] && [ -z "${RDMQ_SOFTROCE_NO_KVM:-}" ]; then
  accel=kvm
fi
kernel=$kdir/vmlinux
[ -f "$kernel" ] || kernel=$kdir/vmlinuz
log "booting $kver ($accel), timeout ${timeout_s}s"
set +e
timeout "$timeout_s" qemu-system-x86_64 \
  -machine q35 -accel "$accel" -cpu max -smp 2 -m 2048 \
  -display none -vga none -serial stdio -monitor none -no-reboot -nic none \
  -device virtio-rng-pci \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$repo",mount_tag=repo,security_model=none,multidevs=remap \
  -virtfs local,path="$ctl",mount_tag=ctl,security_model=none \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init tsc=reliable mitigations=off rdmq.repo=$repo" \
  < /dev/null
qemu_rc=$?
set -e
if [ $qemu_rc -eq 124 ]; then
  log "timed out after ${timeout_s}s"
  exit 124
fi
if [ ! -s "$ctl/status" ]; then
  log "the guest never reported a status (qemu exit $qemu_rc)"
  exit 125
fi
exit "$(cat "$ctl/status")"
