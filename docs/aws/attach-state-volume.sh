#!/usr/bin/env bash
# Attach the server's state volume to this instance and mount it (formatting it only when new).
# Usage: attach-state-volume.sh ENV_FILE MOUNT_POINT   (run as root on the head, by `ray up`)
set -euo pipefail
env_file=$1 mount_point=$2
# shellcheck disable=SC1090
set -a && . "$env_file" && set +a
: "${NCAAS_STATE_VOLUME:?set NCAAS_STATE_VOLUME in $env_file}"
token=$(curl -sS -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
instance=$(curl -sS -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/instance-id)
device=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${NCAAS_STATE_VOLUME//-/}
if [ ! -e "$device" ]; then
  aws ec2 attach-volume --volume-id "$NCAAS_STATE_VOLUME" --instance-id "$instance" --device /dev/sdf
  aws ec2 wait volume-in-use --volume-ids "$NCAAS_STATE_VOLUME"
  for _ in $(seq 60); do [ -e "$device" ] && break; sleep 1; done
fi
blkid "$device" >/dev/null || mkfs.ext4 -q "$device"  # a new volume only: never reformat state
mkdir -p "$mount_point"
mountpoint -q "$mount_point" || mount "$device" "$mount_point"
grep -q " $mount_point " /etc/fstab || echo "$device $mount_point ext4 defaults,nofail 0 2" >> /etc/fstab
chown ubuntu:ubuntu "$mount_point" && chmod 0700 "$mount_point"
