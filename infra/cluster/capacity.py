"""Before any instance is launched: the vCPU quotas a cluster needs, per region, against the account's.

EC2 counts running on-demand instances against a vCPU quota per family
(infra.quotas.QUOTA_CODES). A cluster needs, in each region it uses:

- the main region: the coordinators' vCPUs (standard family, m6i…);
- where its warm instances go: their vCPUs;
- wherever a listed type is offered: room for one more instance of the
  largest listed type of each family, so the first job can start.

Slots whose instance already runs need nothing more, and when nothing is
to be launched there is nothing to check (a re-run asks no quota).

Only on-demand quotas stop a create: the cluster launches nothing on spot
(`meshctl quotas check` reports spot quotas for the jobs). The comparison is
with what is free under each quota: its value minus the vCPUs of the
on-demand instances already pending or running in the region, the
cluster's own included (infra.quotas.running_vcpus), as EC2 judges a launch.
"""

from __future__ import annotations

from typing import Any

from infra import quotas
from infra.cluster import instances
from infra.cluster.spec import ClusterDoc
from infra.quotas import Need, QuotaRow


def needs(doc: ClusterDoc, offered: dict[str, tuple[str, ...]], vcpus: dict[str, int],
          existing: frozenset[str] | set[str] = frozenset()) -> list[Need]:
    """`offered`: selected region → listed types offered there; `vcpus`: type → vCPUs (every type
    named); `existing`: slots whose instance is already there (they need no more vCPUs)."""
    spec = doc.spec
    want: dict[tuple[str, str, str], int] = {}
    types: dict[tuple[str, str, str], set[str]] = {}

    def add(region: str, itype: str, n: int) -> None:
        code, name = quotas.codes_for(itype)[0]
        key = (region, code, name)
        want[key] = want.get(key, 0) + n
        types.setdefault(key, set()).add(itype)

    missing = [n for n in instances.coordinator_names(spec) if n not in existing]
    warm = [slot for slot in instances.warm_slots(doc, offered) if slot.name not in existing]
    if not missing and not warm:
        return []
    if missing:
        add(spec.main_region, spec.coordinator_instance_type, len(missing) * vcpus[spec.coordinator_instance_type])
    for slot in warm:
        add(slot.region, slot.instance_type, vcpus[slot.instance_type])
    for region, here in sorted(offered.items()):
        largest: dict[str, str] = {}
        for t in here:
            code = quotas.codes_for(t)[0][0]
            if code not in largest or vcpus[t] > vcpus[largest[code]]:
                largest[code] = t
        for t in largest.values():
            add(region, t, vcpus[t])
    return [Need(r, c, n, v, tuple(sorted(types[(r, c, n)]))) for (r, c, n), v in sorted(want.items())]


def shortfall_message(name: str, rows: list[QuotaRow]) -> str:
    short = [r for r in rows if r.short]
    lines = [f"{r.need.region} {r.need.code} ({r.need.name}): {_n(r.current)} vCPUs, {r.used} in use, needs "
             f"{r.need.vcpus} more for {', '.join(r.need.types)}" for r in short]
    return (f"cluster {name}: {len(short)} vCPU quota{'s are' if len(short) > 1 else ' is'} too low, nothing "
            "was launched: " + "; ".join(lines) + f". Ask AWS with `meshctl quotas request --cluster {name}`, "
            "then run this command again once granted")


def _n(x: Any) -> str:
    return "0 (never set)" if x is None else f"{x:g}"


__all__ = ["needs", "shortfall_message"]
