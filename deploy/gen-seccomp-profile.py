#!/usr/bin/env python3
"""Writes deploy/seccomp-io_uring.json, the seccomp profile for cutie's containers.

Why: Docker (since 25.0) and containerd block io_uring_setup, io_uring_enter and
io_uring_register in their default seccomp profiles, and cutie does all its I/O
through io_uring (glommio), so it cannot run under them.

How the profile is built (run this script to rebuild it; it needs only Python 3
and the kernel's syscall tables from Debian's linux-libc-dev):

- Default action: SCMP_ACT_ERRNO (EPERM). Anything not listed fails; runc makes
  syscalls newer than every listed one fail with ENOSYS instead, so libc falls
  back to older calls.
- Allowed: every syscall in the x86_64 and the generic (arm64) tables, plus the
  few newer ones in NEWER, minus DENY: the calls that change the host (mounts,
  namespaces, modules, clocks, reboot, swap, quotas), inspect or control other
  processes (ptrace, process_vm_*, kcmp, pidfd_getfd, bpf, perf_event_open),
  reach the kernel keyring, or exist only for legacy hardware. That is the same
  line Docker's default profile draws for a container without extra
  capabilities, written out here as an explicit allow list.
- io_uring_setup, io_uring_enter and io_uring_register: allowed, in their own
  rule so the reason is visible.
- clone: allowed only without namespace flags (CLONE_NEWNS, NEWCGROUP, NEWUTS,
  NEWIPC, NEWUSER, NEWPID, NEWNET); clone3 answers ENOSYS (its flags sit behind
  a pointer seccomp cannot read), and glibc then uses clone.
- socket: every address family except AF_VSOCK (40).

Only the fields Docker, containerd, CRI-O and runc all read are used
(defaultAction, defaultErrnoRet, architectures, syscalls[].names/action/args/
errnoRet, plus "comment", which they ignore), so the same file works for
`docker run --security-opt seccomp=...` and a Kubernetes Localhost profile.

Usage: deploy/gen-seccomp-profile.py [OUTPUT]   (default: next to this script)
"""

import json
import re
import sys
from pathlib import Path

TABLES = [
    # x86_64: `#define __NR_read 0`
    Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    # arm64 and other new architectures: `#define __NR_io_setup 0`,
    # `#define __NR3264_fcntl 25` (fcntl on 64-bit)
    Path("/usr/include/asm-generic/unistd.h"),
]

# Added to Linux after 6.1 (the tables of Debian 12's linux-libc-dev) and
# harmless for an unprivileged process. runc and containerd skip a name their
# libseccomp does not know.
NEWER = [
    "cachestat",  # 6.5: page-cache statistics of a file the caller opened
    "fchmodat2",  # 6.6: fchmodat with flags
    "map_shadow_stack",  # 6.6: glibc's CET shadow stacks
    "futex_wake",  # 6.7: futex2
    "futex_wait",  # 6.7
    "futex_requeue",  # 6.7
    "mseal",  # 6.10: seal one's own mappings
    "setxattrat",  # 6.13: *xattr relative to a directory fd
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "file_getattr",  # 6.17: inode attributes relative to a directory fd
    "file_setattr",
]

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]

# Namespace flags of clone(2): CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
# CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET.
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
AF_VSOCK = 40
ENOSYS = 38
EPERM = 1

# Not allowed, with why. Names that are not in a table need not be listed: the
# default action already refuses them.
DENY = {
    # Changing the host: mounts, namespaces, root directory.
    "mount": "mounts",
    "umount2": "mounts",
    "pivot_root": "mounts",
    "chroot": "changes the root directory",
    "fsopen": "new mount API",
    "fsconfig": "new mount API",
    "fsmount": "new mount API",
    "fspick": "new mount API",
    "move_mount": "new mount API",
    "open_tree": "new mount API",
    "mount_setattr": "new mount API",
    "setns": "joins namespaces",
    "unshare": "creates namespaces",
    "clone": "allowed only without namespace flags, in its own rule",
    "clone3": "answers ENOSYS, in its own rule",
    "socket": "allowed except AF_VSOCK, in its own rule",
    # Kernel modules, reboot, kexec.
    "init_module": "kernel modules",
    "finit_module": "kernel modules",
    "delete_module": "kernel modules",
    "create_module": "kernel modules (obsolete)",
    "query_module": "kernel modules (obsolete)",
    "get_kernel_syms": "kernel modules (obsolete)",
    "reboot": "reboots the host",
    "kexec_load": "loads a new kernel",
    "kexec_file_load": "loads a new kernel",
    # The host's clock, name, accounting, quotas, swap, log.
    "settimeofday": "sets the host clock",
    "clock_settime": "sets the host clock",
    "clock_adjtime": "adjusts the host clock",
    "adjtimex": "adjusts the host clock",
    "sethostname": "host name",
    "setdomainname": "host name",
    "acct": "process accounting",
    "quotactl": "disk quotas",
    "quotactl_fd": "disk quotas",
    "swapon": "swap",
    "swapoff": "swap",
    "syslog": "kernel log buffer",
    "vhangup": "hangs up the terminal",
    # Inspecting or controlling other processes, kernel instrumentation.
    "ptrace": "traces other processes",
    "process_vm_readv": "reads other processes' memory",
    "process_vm_writev": "writes other processes' memory",
    "process_madvise": "advises on other processes' memory",
    "kcmp": "compares other processes' kernel objects",
    "pidfd_getfd": "takes other processes' file descriptors",
    "perf_event_open": "performance monitoring, a large attack surface",
    "bpf": "eBPF programs",
    "userfaultfd": "user page-fault handling, used in kernel exploits",
    "lookup_dcookie": "profiling",
    "fanotify_init": "filesystem-wide monitoring",
    "open_by_handle_at": "bypasses path permission checks",
    "name_to_handle_at": "pairs with open_by_handle_at",
    # The kernel keyring (not namespaced).
    "add_key": "kernel keyring",
    "request_key": "kernel keyring",
    "keyctl": "kernel keyring",
    # NUMA memory policy (Docker allows it only with CAP_SYS_NICE; cutie does not use it).
    "mbind": "NUMA policy",
    "set_mempolicy": "NUMA policy",
    "set_mempolicy_home_node": "NUMA policy",
    "get_mempolicy": "NUMA policy",
    "migrate_pages": "NUMA policy",
    "move_pages": "NUMA policy",
    # Execution domains and legacy or hardware-specific calls.
    "personality": "execution domain (can disable ASLR)",
    "iopl": "I/O port access",
    "ioperm": "I/O port access",
    "modify_ldt": "x86 local descriptor table",
    "uselib": "obsolete",
    "ustat": "obsolete",
    "sysfs": "obsolete",
    "_sysctl": "obsolete",
    "nfsservctl": "obsolete",
    "afs_syscall": "not implemented",
    "getpmsg": "not implemented",
    "putpmsg": "not implemented",
    "security": "not implemented",
    "tuxcall": "not implemented",
    "vserver": "not implemented",
    "epoll_ctl_old": "not implemented",
    "epoll_wait_old": "not implemented",
}


def table_names(path: Path) -> set[str]:
    text = path.read_text()
    names = set(re.findall(r"^#define __NR_([a-z0-9_]+)\s+\d", text, re.M))
    # The generic table names a few calls through __NR3264_* and gives their
    # 64-bit names (fcntl, newfstatat, mmap, ...) in one block.
    block = re.search(r"^#if __BITS_PER_LONG == 64 && !defined\(__SYSCALL_COMPAT\)$(.*?)^#else", text, re.M | re.S)
    if block:
        names |= set(re.findall(r"^#define __NR_([a-z0-9_]+)\s+__NR3264_", block.group(1), re.M))
    # The generic table's own bookkeeping entries.
    names -= {"syscalls", "arch_specific_syscall"}
    # The generic table also serves 32-bit architectures; their 64-bit-time
    # variants (clock_gettime64, futex_time64, ...) do not exist on x86_64 or arm64.
    return {n for n in names if not re.search(r"_time64$|^(clock|timer|timerfd)_\w+64$", n)}


def profile() -> dict:
    names: set[str] = set(NEWER)
    for table in TABLES:
        names |= table_names(table)
    allowed = sorted(names - set(DENY) - set(IO_URING))
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
        "syscalls": [
            {
                "names": allowed,
                "action": "SCMP_ACT_ALLOW",
                "comment": "x86_64 and arm64 syscall tables minus the host-changing, "
                "process-inspecting, keyring and legacy calls listed in "
                "deploy/gen-seccomp-profile.py (DENY)",
            },
            {
                "names": IO_URING,
                "action": "SCMP_ACT_ALLOW",
                "comment": "cutie does all its I/O through io_uring (glommio); Docker's "
                "and containerd's default profiles refuse these",
            },
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": 0,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
                "comment": "threads and processes, but no new namespaces",
            },
            {
                "names": ["clone3"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": ENOSYS,
                "comment": "its flags are behind a pointer seccomp cannot read; "
                "ENOSYS makes glibc fall back to clone",
            },
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": AF_VSOCK, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
                "comment": "every address family except AF_VSOCK (host-guest sockets)",
            },
        ],
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name(
        "seccomp-io_uring.json"
    )
    for table in TABLES:
        if not table.exists():
            sys.exit(f"{table} is missing: install linux-libc-dev (apt-get install linux-libc-dev)")
    out.write_text(json.dumps(profile(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
