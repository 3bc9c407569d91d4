"""The lab's shape: which namespaces exist, how they are wired, and each node's facts.

    internet segment 198.18.0.0/24 (a bridge in namespace "inet")
      ├─ hub    198.18.0.4   (also 10.4.0.10 in the main-region VPC 10.4.0.0/16)
      ├─ aws    198.18.0.2   the AWS side: routes hub VPC <-> each regional VPC
      │    │                 (peering, not transitive: regional <-> regional is
      │    │                 dropped) and NATs the regional VPCs to the internet
      │    ├─ ra 10.21.0.10  regional VPC 10.21.0.0/16, no public address
      │    └─ rb 10.31.0.10  regional VPC 10.31.0.0/16, no public address
      ├─ cloud  198.18.0.20  a VM on another cloud with a public address
      └─ natgw  198.18.0.30  masquerading NAT in front of
           └─ nat 192.168.77.10  a VM with no public address

Mesh addresses: AWS nodes use their VPC address; the others come from the
overlay range 100.64.0.0/16. Only these test ranges are used (198.18.0.0/15
is reserved for benchmarking networks).
"""

from __future__ import annotations

from dataclasses import dataclass

MAIN_REGION = "us-east-1"
INTERNET = "198.18.0.0/24"
NAT_LAN = "192.168.77.0/24"


@dataclass(frozen=True)
class NodeSpec:
    role: str
    cloud: str
    region: str
    vpc_id: str = ""
    vpc_cidr: str = ""
    private_address: str = ""
    public_address: str = ""
    mesh_address: str = ""


NODES = (
    NodeSpec("hub", "aws", MAIN_REGION, "vpc-hub", "10.4.0.0/16", "10.4.0.10", "198.18.0.4", "10.4.0.10"),
    NodeSpec("ra", "aws", "eu-west-1", "vpc-ra", "10.21.0.0/16", "10.21.0.10", "", "10.21.0.10"),
    NodeSpec("rb", "aws", "ap-northeast-1", "vpc-rb", "10.31.0.0/16", "10.31.0.10", "", "10.31.0.10"),
    NodeSpec("cloud", "gcp", "us-central1", "", "", "", "198.18.0.20", "100.64.0.20"),
    NodeSpec("nat", "onprem", "home", "", "", "192.168.77.10", "", "100.64.0.30"),
)
ROUTERS = ("inet", "aws", "natgw")

AWS_PUBLIC = "198.18.0.2"
NAT_PUBLIC = "198.18.0.30"


def build_steps(ns: dict[str, str], nat_public: str = NAT_PUBLIC) -> list[list[str]]:
    """The commands that wire the lab once its namespaces exist. `ns` maps role -> namespace.
    A command ending in `-f -` is followed by the text to feed it on stdin."""
    steps: list[list[str]] = []

    def ip(role: str, *args: str) -> None:
        steps.append(["ip", "-n", ns[role], *args])

    def veth(a: str, a_if: str, b: str, b_if: str) -> None:
        steps.append(["ip", "link", "add", a_if, "netns", ns[a], "type", "veth", "peer", "name", b_if, "netns", ns[b]])
        ip(a, "link", "set", a_if, "up")
        ip(b, "link", "set", b_if, "up")

    def addr(role: str, dev: str, cidr: str) -> None:
        ip(role, "addr", "add", cidr, "dev", dev)

    for role in ns:
        ip(role, "link", "set", "lo", "up")
    ip("inet", "link", "add", "br0", "type", "bridge")
    ip("inet", "link", "set", "br0", "up")
    for role, public in (("hub", "198.18.0.4"), ("aws", AWS_PUBLIC), ("cloud", "198.18.0.20"), ("natgw", nat_public)):
        veth(role, "pub", "inet", f"p-{role}")
        ip("inet", "link", "set", f"p-{role}", "master", "br0")
        addr(role, "pub", f"{public}/24")
    # The AWS side: one link per VPC.
    for role, vpc in (("hub", "10.4"), ("ra", "10.21"), ("rb", "10.31")):
        veth("aws", f"vpc-{role}", role, "vpc")
        addr("aws", f"vpc-{role}", f"{vpc}.0.1/16")
        addr(role, "vpc", f"{vpc}.0.10/16")
    ip("hub", "route", "add", "10.21.0.0/16", "via", "10.4.0.1")
    ip("hub", "route", "add", "10.31.0.0/16", "via", "10.4.0.1")
    ip("ra", "route", "add", "default", "via", "10.21.0.1")
    ip("rb", "route", "add", "default", "via", "10.31.0.1")
    steps += nat_box_steps(ns, nat_public, with_pub=False)
    for role in ("aws", "natgw"):
        steps.append(["ip", "netns", "exec", ns[role], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    steps.append(["ip", "netns", "exec", ns["aws"], "nft", "-f", "-", AWS_RULES])  # last item: stdin
    return steps


def nat_box_steps(ns: dict[str, str], nat_public: str, with_pub: bool) -> list[list[str]]:
    """The NAT box and its LAN; with_pub also attaches it to the internet (used when it is rebuilt)."""
    steps: list[list[str]] = []
    g, n = ns["natgw"], ns["nat"]
    if with_pub:
        steps += [["ip", "link", "add", "pub", "netns", g, "type", "veth", "peer", "name", "p-natgw", "netns", ns["inet"]],
                  ["ip", "-n", ns["inet"], "link", "set", "p-natgw", "master", "br0"],
                  ["ip", "-n", ns["inet"], "link", "set", "p-natgw", "up"],
                  ["ip", "-n", g, "link", "set", "lo", "up"],
                  ["ip", "-n", g, "link", "set", "pub", "up"],
                  ["ip", "-n", g, "addr", "add", f"{nat_public}/24", "dev", "pub"],
                  ["ip", "netns", "exec", g, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]]
    steps += [["ip", "link", "add", "lan", "netns", g, "type", "veth", "peer", "name", "lan", "netns", n],
              ["ip", "-n", g, "link", "set", "lan", "up"],
              ["ip", "-n", n, "link", "set", "lan", "up"],
              ["ip", "-n", g, "addr", "add", "192.168.77.1/24", "dev", "lan"],
              ["ip", "-n", n, "addr", "add", "192.168.77.10/24", "dev", "lan"],
              ["ip", "-n", n, "route", "add", "default", "via", "192.168.77.1"],
              ["ip", "netns", "exec", g, "nft", "-f", "-", NAT_RULES]]  # last item: stdin
    return steps


# AWS VPC peering forwards only between the main-region VPC and each regional
# VPC; the regional VPCs reach the internet through a NAT gateway.
AWS_RULES = """
table inet lab {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ip saddr 10.4.0.0/16 ip daddr { 10.21.0.0/16, 10.31.0.0/16 } accept
    ip saddr { 10.21.0.0/16, 10.31.0.0/16 } ip daddr 10.4.0.0/16 accept
    iifname { "vpc-ra", "vpc-rb" } oifname "pub" accept
    iifname "pub" ct state established,related accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "pub" ip saddr { 10.21.0.0/16, 10.31.0.0/16 } masquerade
  }
}
"""

# A home router: outbound only, everything masqueraded, nothing in unless answering.
NAT_RULES = """
table inet lab {
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "pub" accept
    iifname "pub" ct state established,related accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "pub" masquerade
  }
}
"""
