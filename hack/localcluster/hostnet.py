"""The host's side of the real node's network: its bridge, a route, two sysctls, iptables chains.

Made here: the bridge ``kubeinfer0`` with the node's address (before the API server
binds it), a route sending the Service range onto that bridge (so a Service address
never leaves the machine, even before kube-proxy has written its rules), and
``net.ipv4.ip_forward=1`` (pod -> Service -> pod goes through the host). The kubelet
sets a few kernel sysctls of its own at start (``KUBELET_SYSCTLS``); the values found
before are saved and put back by ``restore_sysctls``.

``sweep_iptables`` removes every chain named ``KUBE-*`` (kube-proxy, the kubelet) or
``CNI-*`` (the portmap plugin) and every rule that jumps to one, in IPv4 and IPv6.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from .nodeconfig import BRIDGE, NODE_IP, POD_SUBNET, SERVICE_CIDR

OUR_SYSCTLS = {"net.ipv4.ip_forward": "1"}
KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
CHAIN_PREFIXES = ("KUBE-", "CNI-")
TABLES = ("filter", "nat", "mangle", "raw")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def bridge_exists() -> bool:
    return _run("ip", "link", "show", BRIDGE, check=False).returncode == 0


def add_bridge() -> None:
    """The bridge with the node's address, up, and the Service range routed onto it."""
    if not bridge_exists():
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "replace", f"{NODE_IP}/{POD_SUBNET.prefixlen}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)


def delete_bridge() -> bool:
    """Remove the bridge (its addresses and routes go with it); True when there was one."""
    if not bridge_exists():
        return False
    _run("ip", "link", "del", BRIDGE, check=False)
    return True


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names) -> dict[str, str]:
    return {n: _sysctl_path(n).read_text().strip() for n in names if _sysctl_path(n).exists()}


def set_sysctls(values: dict[str, str]) -> None:
    for name, value in values.items():
        _sysctl_path(name).write_text(f"{value}\n")


def restore_sysctls(saved: dict[str, str]) -> list[str]:
    """Put back the values saved before the node started; returns the names that had changed."""
    changed = [n for n, v in read_sysctls(saved).items() if v != saved[n]]
    set_sysctls({n: saved[n] for n in changed})
    return changed


def our_chains(rules: str) -> set[str]:
    """The KUBE-*/CNI-* chains declared in ``iptables -S`` output."""
    chains = set()
    for line in rules.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("-N", "-P") and parts[1].startswith(CHAIN_PREFIXES):
            chains.add(parts[1])
    return chains


def rules_jumping_to(rules: str, chains: set[str]) -> list[list[str]]:
    """The ``-A`` rules (as argv tails, ``-A`` dropped) in chains of others that jump into ``chains``."""
    found = []
    for line in rules.splitlines():
        parts = shlex.split(line)  # comments are quoted: --comment "kubernetes service portals"
        if len(parts) > 2 and parts[0] == "-A" and parts[1] not in chains:
            target = parts[parts.index("-j") + 1] if "-j" in parts[:-1] else ""
            if target in chains:
                found.append(parts[1:])
    return found


def _tables_with_our_chains():
    """(tool, table, ``-S`` listing, our chains) for every table that holds one of ours."""
    for tool in ("iptables", "ip6tables"):
        for table in TABLES:
            listing = _run(tool, "-w", "-t", table, "-S", check=False)
            chains = our_chains(listing.stdout) if listing.returncode == 0 else set()
            if chains:
                yield tool, table, listing.stdout, chains


def sweep_iptables() -> list[str]:
    """Delete our chains and the rules leading to them, in every table, IPv4 and IPv6."""
    removed = []
    for tool, table, rules, chains in _tables_with_our_chains():
        for rule in rules_jumping_to(rules, chains):
            _run(tool, "-w", "-t", table, "-D", *rule, check=False)
        for flag in ("-F", "-X"):  # empty them all first: our chains jump to each other
            for chain in chains:
                _run(tool, "-w", "-t", table, flag, chain, check=False)
        removed += [f"{tool} {table} {c}" for c in sorted(chains)]
    return removed


def leftover_chains() -> list[str]:
    """Our chains still present (for the checks of ``make cluster-down``)."""
    return [f"{tool} {table} {c}" for tool, table, _, chains in _tables_with_our_chains() for c in sorted(chains)]
