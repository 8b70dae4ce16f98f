"""A Debian 12 Vagrant box for the libvirt provider, built here from Debian's archive.

``scripts/vagrant-lab`` runs ``vagrant/Vagrantfile`` under libvirt on a machine
that must not download a box: it builds one with this module
(``python -m overlayd.lab.vagrant_box`` prints the ``.box`` file's path) and
adds it under its own name; the Vagrantfile's default box stays Debian's
public ``debian/bookworm64`` where the internet is reachable.

Design notes:

* The tree is the machines lab's node image recipe (:class:`machines.Recipe`:
  every package ``scripts/install`` names, a venv with overlayd's Python
  requirements and pip pointed at their wheels, offline), plus what a VM and
  Vagrant need (:data:`BOX_PACKAGES`: Debian's cloud kernel, GRUB, sshd,
  sudo, rsync for the synced folder) and the ``vagrant`` user with Vagrant's
  insecure key (Vagrant replaces it at the first ``up``). So a VM's
  provisioning (``scripts/install``) finds everything installed and the VMs
  need no route out. The wheels are copied from the machines lab's image
  (:func:`machines.ensure_image`, already built by ``scripts/install
  --machines``): building the box fetches nothing but Debian packages.
* The disk: a sparse raw file with one MBR partition, ext4 labelled
  :data:`LABEL` and filled from the tree by ``mkfs.ext4 -d`` (no copy through
  a mount), then GRUB's boot code installed by the tree's own
  ``grub-install`` through a loop device, in a private mount namespace (its
  mounts cannot outlive it). Pitfalls measured here: ``losetup -P`` makes no
  partition nodes (``partx -a`` does), and ``update-grub`` in a chroot writes
  the loop device as the root, so ``grub.cfg`` and ``fstab`` are written
  here and name the root by its label.
* The box uses metadata format v2 (``disks``): vagrant-libvirt reads the
  disk's size from the qcow2 itself, where format v1's ``virtual_size`` (whole
  GB, given by hand) smaller than the image would cut the disk short.
* Network: systemd-networkd, DHCP on eth0 (vagrant-libvirt's management
  network) without DNS, and no resolver: nothing a VM does is forwarded off
  this machine by libvirt's dnsmasq. Vagrant writes eth1's file (the private
  network) itself (its Debian guest support uses networkd when it runs).
* No ssh host keys in the box: openssh-server's install made some in the tree, which every VM
  of the box would have shared (one VM could pose as another); they are deleted and each VM
  makes its own at its first boot (:func:`host_keys_unit`, before sshd).
* The ``.box`` is cached in :data:`CACHE_DIR`, named by a hash of everything
  that makes it (the recipe's mmdebstrap command with its hooks, the disk's
  size and label, the metadata), and rebuilt when that changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterator

import click

from ..cli.common import one_line_errors
from . import machines
from .topology import LabError, run

CACHE_DIR = "/var/cache/overlayd/vagrant"  # built boxes, <key>.box
LABEL = "overlayd-root"  # the root file system's label: grub.cfg and fstab find it by this
DISK_BYTES = 8 << 30  # the VM's disk (sparse here; the qcow2 holds what is used)
USER = "vagrant"
# Debian's cloud kernel has virtio, tun, vxlan, nftables and wireguard built or as modules, and fewer
# drivers to probe than linux-image-amd64 (a shorter boot under software emulation).
BOX_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "grub-pc-bin", "grub2-common", "udev", "kmod",
                "e2fsprogs", "openssh-server", "sudo", "rsync")
KERNEL_ARGS = f"root=LABEL={LABEL} ro net.ifnames=0 console=tty0 console=ttyS0,115200n8"
# Where Debian's vagrant package keeps the insecure key pair the boxes carry.
VAGRANT_KEYS = "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub"


def grub_cfg() -> str:
    """The boot menu: one entry, the root found by its label, output on VGA and the serial port. Pure."""
    return f"""serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=0
set timeout=0
insmod part_msdos
insmod ext2
search --no-floppy --label --set=root {LABEL}
menuentry "Debian 12 (overlayd lab)" {{
    linux /vmlinuz {KERNEL_ARGS}
    initrd /initrd.img
}}
"""


def fstab() -> str:
    """The root by its label. Pure."""
    return f"LABEL={LABEL} / ext4 errors=remount-ro 0 1\n"


def eth0_network() -> str:
    """systemd-networkd's file for the management network: DHCP, no DNS (see the module notes). Pure."""
    return "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n\n[DHCPv4]\nUseDNS=false\nUseNTP=false\nUseDomains=false\n"


HOST_KEYS_UNIT = "/etc/systemd/system/ssh-host-keys.service"


def host_keys_unit() -> str:
    """A unit making the machine's own ssh host keys at its first boot, before sshd starts. Pure."""
    return ("[Unit]\nDescription=This machine's own ssh host keys (the box has none)\n"
            "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\nBefore=ssh.service\n\n"
            "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
            "[Install]\nRequiredBy=ssh.service\nWantedBy=multi-user.target\n")


def metadata() -> dict:
    """The box's metadata.json: vagrant-libvirt's format v2, the size read from the disk. Pure."""
    return {"provider": "libvirt", "format": "qcow2", "disks": [{"path": "box.img"}]}


def box_vagrantfile() -> str:
    """The Vagrantfile packed in the box (the lab's own Vagrantfile says the rest). Pure."""
    return ('# overlayd lab box: Debian 12 built from Debian\'s archive (overlayd/lab/vagrant_box.py)\n'
            'Vagrant.configure("2") do |config|\n'
            '  config.vm.provider :libvirt do |libvirt|\n'
            '    libvirt.disk_bus = "virtio"\n'
            '  end\n'
            'end\n')


def _write(path: str, text: str, mode: str = "0644") -> str:
    """A customize hook writing ``text`` to ``path`` in the tree."""
    return f'printf %s {shlex.quote(text)} > "$1{path}" && chmod {mode} "$1{path}"'


def box_hooks(public_key: str) -> list[str]:
    """mmdebstrap customize hooks making the tree a Vagrant box (after the recipe's). Pure."""
    home = f"/home/{USER}"
    return [
        f'chroot "$1" useradd --create-home --shell /bin/bash {USER}',
        _write(f"/etc/sudoers.d/{USER}", f"{USER} ALL=(ALL) NOPASSWD: ALL\n", "0440"),
        f'install -d -m 0700 "$1{home}/.ssh"',
        _write(f"{home}/.ssh/authorized_keys", public_key.strip() + "\n", "0600"),
        f'chroot "$1" chown -R {USER}:{USER} {home}/.ssh',
        _write("/etc/systemd/network/10-eth0.network", eth0_network()),
        'systemctl --root="$1" enable systemd-networkd.service',
        'rm -f "$1"/etc/ssh/ssh_host_*',  # every VM makes its own (see the module notes)
        _write(HOST_KEYS_UNIT, host_keys_unit()),
        'systemctl --root="$1" enable ssh-host-keys.service',
        'rm -f "$1/etc/resolv.conf"',  # no resolver (see the module notes)
        _write("/etc/fstab", fstab()),
        'mkdir -p "$1/boot/grub"',
        _write("/boot/grub/grub.cfg", grub_cfg()),
        # the kernel's and the initramfs' symlinks, which grub.cfg names
        'test -e "$1/vmlinuz" && test -e "$1/initrd.img"',
    ]


@dataclasses.dataclass(frozen=True)
class BoxRecipe:
    """How a box is built: the machines lab's recipe, with the box's packages, and its hooks."""

    base: machines.Recipe
    public_key: str

    def mmdebstrap_argv(self, target: str, wheels: str) -> list[str]:
        """The command that builds the box's tree into ``target``. Pure."""
        recipe = dataclasses.replace(self.base, packages=tuple(dict.fromkeys(self.base.packages + BOX_PACKAGES)))
        argv = recipe.mmdebstrap_argv(target, wheels)
        hooks = [f"--customize-hook={hook}" for hook in box_hooks(self.public_key)]
        return argv[:-2] + hooks + argv[-2:]  # the suite and the target stay last

    def key(self) -> str:
        """The box's name in the cache: a hash of everything that makes it. Pure."""
        text = json.dumps([self.mmdebstrap_argv("TARGET", "WHEELS"), DISK_BYTES, LABEL, metadata(),
                           box_vagrantfile()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def vagrant_public_key(pattern: str = VAGRANT_KEYS) -> str:
    """Vagrant's insecure public key, from the installed vagrant package."""
    found = sorted(glob.glob(pattern))
    if not found:
        raise LabError(f"no Vagrant insecure key at {pattern} (apt install vagrant)")
    with open(found[-1], encoding="utf-8") as f:
        return f.read()


@contextlib.contextmanager
def _loop(raw: str) -> Iterator[str]:
    """``raw`` attached to a loop device with its partitions' nodes (``partx -a``); the device."""
    device = run(["losetup", "--find", "--show", raw]).stdout.strip()
    try:
        run(["partx", "--add", device])
        yield device
    finally:
        run(["partx", "--delete", device], check=False)
        run(["losetup", "--detach", device], check=False)


# grub-install from the tree, in a private mount namespace: $1 the partition, $2 the disk, $3 a mount point
GRUB_INSTALL = r"""
set -e
mount "$1" "$3"
mount --bind /dev "$3/dev"
mount -t proc proc "$3/proc"
mount -t sysfs sysfs "$3/sys"
printf '(hd0) %s\n' "$2" > "$3/boot/grub/device.map"
chroot "$3" grub-install --target=i386-pc --modules="part_msdos ext2" "$2"
rm -f "$3/boot/grub/device.map"
umount "$3/sys" "$3/proc" "$3/dev"
umount "$3"
"""


def _disk(tree: str, work: str, log) -> str:
    """The bootable raw disk image made of ``tree`` (see the module notes); its path."""
    raw = os.path.join(work, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(DISK_BYTES)
    run(["sfdisk", "--quiet", raw], input="label: dos\nstart=2048, type=83, bootable\n")
    with _loop(raw) as device:
        partition = f"{device}p1"
        if not os.path.exists(partition):
            raise LabError(f"partx made no {partition}")
        run(["mkfs.ext4", "-q", "-L", LABEL, "-d", tree, partition], timeout=900)
        mnt = os.path.join(work, "mnt")
        os.makedirs(mnt, exist_ok=True)
        res = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", GRUB_INSTALL,
                              "grub-install", partition, device, mnt],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
        if res.returncode != 0:
            raise LabError(f"grub-install failed (exit {res.returncode}); its output is in {log.name}")
        run(["e2fsck", "-f", "-n", partition], timeout=300)  # the file system as the VM will find it
    return raw


def build(recipe: BoxRecipe, wheels: str, out: str, progress: Callable[[str], None]) -> None:
    """Build the box of ``recipe`` into ``out`` (a ``.box`` file), the wheels taken from ``wheels``."""
    machines.need("mmdebstrap", "sfdisk", "partx", "losetup", "mkfs.ext4", "qemu-img", "unshare")
    work = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(out))
    log_path = os.path.join(os.path.dirname(out), "build.log")
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            tree = os.path.join(work, "rootfs")
            progress("box: mmdebstrap (Debian 12 from Debian's archive)")
            try:
                code = subprocess.run(recipe.mmdebstrap_argv(tree, wheels), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=1800).returncode
            except subprocess.TimeoutExpired:
                code = "timed out after 1800s"
            if code != 0:
                raise LabError(f"building the box's tree failed (mmdebstrap: {code}); its output is in {log_path}")
            progress("box: disk image (partition, ext4, GRUB)")
            raw = _disk(tree, work, log)
        shutil.rmtree(tree)
        progress("box: qcow2 and .box")
        run(["qemu-img", "convert", "-O", "qcow2", raw, os.path.join(work, "box.img")], timeout=900)
        os.unlink(raw)
        with open(os.path.join(work, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump(metadata(), f)
        with open(os.path.join(work, "Vagrantfile"), "w", encoding="utf-8") as f:
            f.write(box_vagrantfile())
        run(["tar", "-cf", out + ".tmp", "-C", work, "metadata.json", "Vagrantfile", "box.img"], timeout=600)
        os.rename(out + ".tmp", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out + ".tmp")


def ensure_box(recipe: BoxRecipe, wheels: str, cache_dir: str = CACHE_DIR,
               progress: Callable[[str], None] = lambda message: None) -> str:
    """The ``.box`` of ``recipe``, built first if the cache has none; other boxes there are removed."""
    os.makedirs(cache_dir, exist_ok=True)
    out = os.path.join(cache_dir, f"{recipe.key()}.box")
    if not os.path.exists(out):
        started = time.monotonic()
        build(recipe, wheels, out, progress)
        progress(f"box built in {time.monotonic() - started:.0f}s: {out}")
        for other in glob.glob(os.path.join(cache_dir, "*.box")):
            if other != out:
                os.unlink(other)
    return out


@click.command()
@click.option("--cache-dir", default=CACHE_DIR, show_default=True, help="Where built boxes are kept.")
@one_line_errors("vagrant-box")
def main(cache_dir: str) -> None:
    """Build the Vagrant lab's libvirt box if the cache has none for its recipe; print its path."""
    if os.geteuid() != 0:
        raise LabError("the box is built as root (mmdebstrap, loop devices, /var/cache/overlayd)")

    def progress(message: str) -> None:
        click.echo(message, err=True)

    base = machines.recipe_for()
    wheels = os.path.join(machines.ensure_image(base, progress=progress), machines.WHEELS.lstrip("/"))
    click.echo(ensure_box(BoxRecipe(base, vagrant_public_key()), wheels, cache_dir, progress))


if __name__ == "__main__":
    sys.exit(main())
