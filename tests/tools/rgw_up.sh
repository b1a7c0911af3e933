#!/usr/bin/env bash
# Single-node Ceph (1 mon, 1 bluestore-on-file OSD, no mgr, auth none) + radosgw on 127.0.0.1:$PORT.
# usage: rgw_up.sh DIR [PORT [MON_PORT]]     stop: rgw_up.sh DIR stop
# needs: apt-get install --no-install-recommends radosgw ceph-mon ceph-osd (uuid-runtime, curl)
# amgmt's copy of shared/tools/rgw_up.sh (CI runs on a clean checkout). Changes: the mon port is an argument
# (default 3300) so that two clusters (two test sessions) can run side by side, the OSD's cluster address is
# 127.0.0.1 instead of every interface, and a start that does not end with radosgw answering exits non-zero.
set -euo pipefail
D=$(realpath -m "$1"); PORT=${2:-8000}; MON_PORT=${3:-3300}
if [ "$PORT" = stop ]; then
  for n in client.rgw.a osd.0 mon.a; do   # in this order; wait for each to exit
    f="$D/run/$n.pid"; [ -f "$f" ] || continue; p=$(cat "$f")
    kill "$p" 2>/dev/null || continue
    for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  exit 0
fi
C="$D/ceph.conf"; CEPH="ceph -c $C"
if [ ! -f "$D/ceph.conf" ]; then
  mkdir -p "$D"/{run,log,mon.a,osd.0}
  FSID=$(uuidgen)
  cat > "$C" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
ms bind ipv6 = false
keyring = $D/keyring
run dir = $D/run
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
pid file = $D/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon allow pool delete = true
mon warn on insecure global id reclaim allowed = false
osd crush chooseleaf type = 0
mon max pg per osd = 2000
mon data avail warn = 1
mon data avail crit = 0
[mon]
mon data = $D/mon.\$id
[osd]
osd data = $D/osd.\$id
osd objectstore = bluestore
bluestore block size = 8589934592
bluestore block create = true
bluestore fsck on mkfs = false
osd memory target = 1073741824
[client.rgw.a]
# rgw insists on 'secure' mode to the mon, which auth=none cannot provide
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw thread pool size = 64
rgw gc obj min wait = 10
rgw gc processor period = 30
EOF
  ceph-authtool --create-keyring "$D/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$D/keyring" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$D/monmap" >/dev/null
  ceph-mon -c "$C" --mkfs -i a --monmap "$D/monmap"
  ceph-mon -c "$C" -i a
  U=$(uuidgen); $CEPH osd new "$U" >/dev/null
  ceph-osd -c "$C" -i 0 --mkfs --osd-uuid "$U" >/dev/null 2>&1
  NEW=1
else
  ceph-mon -c "$C" -i a
  NEW=0
fi
ceph-osd -c "$C" -i 0 2>/dev/null
for i in $(seq 1 120); do $CEPH osd stat 2>/dev/null | grep -q '1 up' && break; sleep 0.5; done
$CEPH osd stat 2>/dev/null | grep -q '1 up' || { echo "rgw_up: the OSD did not come up (see $D/log)" >&2; exit 1; }
radosgw -c "$C" -n client.rgw.a --client-mount-timeout=30
for i in $(seq 1 240); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.25; done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/" || { echo "rgw_up: radosgw does not answer on 127.0.0.1:$PORT (see $D/log)" >&2; exit 1; }
if [ "$NEW" = 1 ]; then
  radosgw-admin -c "$C" user create --uid=test --display-name=test --access-key=testkey --secret-key=testsecret >/dev/null
fi
echo "rgw up on http://127.0.0.1:$PORT (access key testkey / secret testsecret)"
