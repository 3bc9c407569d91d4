"""GPUs: NVML through `nvidia-ml-py`, else `nvidia-smi`; no GPU, no GPU labels.

NVML gives model, count, memory per GPU, driver and CUDA version. Where the
library is missing or fails (no driver, a container without the device
files), `nvidia-smi --query-gpu=name,memory.total,driver_version
--format=csv,noheader,nounits` is asked instead; where neither works the node
simply has no GPU facts, and one warning says why when NVML was present but
failed. Labels follow NVIDIA's GPU feature discovery in spirit: the model
with spaces as '-' (a Kubernetes label value), count, memory in MiB.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass

from meshagent.facts.base import FactsError

log = logging.getLogger("meshagent.facts")

#: at most this many GPUs are believed in one machine's answer
MAX_GPUS = 64


@dataclass(frozen=True)
class GpuFacts:
    model: str
    count: int
    memory_mib: int
    driver: str = ""
    cuda: str = ""

    def labels(self) -> dict[str, str]:
        out = {"gpu.model": label_value(self.model), "gpu.count": str(self.count),
               "gpu.memory_mib": str(self.memory_mib)}
        if self.driver:
            out["gpu.driver"] = label_value(self.driver)
        if self.cuda:
            out["gpu.cuda"] = label_value(self.cuda)
        return out


def label_value(raw: str) -> str:
    """A Kubernetes label value: letters, digits, '-', '_', '.'; 63 at most; alphanumeric at both ends."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw.strip())[:63]
    return s.strip("-_.")


def parse_nvidia_smi(out: str) -> GpuFacts | None:
    """Lines of `name, memory.total (MiB), driver_version`; None when there are none."""
    rows = []
    for line in out.strip().splitlines()[:MAX_GPUS + 1]:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0]:
            raise FactsError(f"nvidia-smi: unexpected line {line[:80]!r}")
        try:
            mem = int(float(parts[1].split()[0]))
        except (ValueError, IndexError):
            raise FactsError(f"nvidia-smi: memory {parts[1][:40]!r} is not a number of MiB") from None
        rows.append((parts[0], mem, parts[2]))
    if not rows:
        return None
    if len(rows) > MAX_GPUS:
        raise FactsError(f"nvidia-smi: more than {MAX_GPUS} GPUs")
    name, mem, driver = rows[0]
    return GpuFacts(model=name, count=len(rows), memory_mib=mem, driver=driver)


def from_nvml(nvml) -> GpuFacts | None:
    """Read the GPUs through an NVML module (pynvml's interface); its errors propagate."""
    nvml.nvmlInit()
    try:
        n = nvml.nvmlDeviceGetCount()
        if n <= 0:
            return None
        h = nvml.nvmlDeviceGetHandleByIndex(0)
        name = nvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else str(name)
        mem = int(nvml.nvmlDeviceGetMemoryInfo(h).total) // (1024 * 1024)
        driver = nvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        cuda = ""
        try:
            v = int(nvml.nvmlSystemGetCudaDriverVersion())
            cuda = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:  # older drivers lack the call
            pass
        return GpuFacts(model=name, count=min(n, MAX_GPUS), memory_mib=mem, driver=driver, cuda=cuda)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def discover_gpus(nvidia_smi: str = "nvidia-smi", timeout_s: float = 5.0) -> tuple[GpuFacts | None, str]:
    """(GPU facts or None, the source used)."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            found = from_nvml(pynvml)
        except Exception as e:  # NVMLError_* (no library, no driver) and anything odd from it
            if type(e).__name__ != "NVMLError_LibraryNotFound":
                log.warning("NVML failed (%s); trying nvidia-smi", e)
        else:
            if found is not None:
                return found, "nvml"
    path = shutil.which(nvidia_smi)
    if path is None:
        return None, ""
    try:
        r = subprocess.run([path, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("nvidia-smi did not answer: %s", e)
        return None, ""
    if r.returncode != 0:
        log.warning("nvidia-smi failed (exit %d): %s", r.returncode, r.stderr.strip()[:200])
        return None, ""
    try:
        return parse_nvidia_smi(r.stdout[:64 * 1024]), "nvidia-smi"
    except FactsError as e:
        log.warning("%s", e)
        return None, ""
