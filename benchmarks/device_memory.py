"""Bytes one device holds in a trainer process, training or resting (`flead.federated.cohort`), by phase.

    python benchmarks/device_memory.py [--devices 200]

For the default model of the Intel Lab fleet: `--devices` devices are made, adopt one global version
and process synthetic readings (batches of 64, timestamps 31 s apart) up to each phase's count, either
training (their own weights and moments) or resting (the global weights shared); resident bytes per
device are Python's traced allocations (tracemalloc) over the devices, checkpointed bytes the detector's
`to_bytes` (without the shared weights when resting). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

import numpy as np

from flead.federated.device import DeviceClient
from flead.federated.state import GlobalState
from flead.fleet import INTEL_LAB
from flead.model.config import TrainConfig, model_for_fleet
from flead.model.detector import OnlineDetector

PHASES = {"before warm-up": 320, "calibrating": 1536, "calibrated": 3008}


def measure(devices: int, readings: int, resting: bool, state: GlobalState, config, train) -> dict:
    rng = np.random.default_rng(0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        clients = []
        for d in range(devices):
            client = DeviceClient(f"d{d}", OnlineDetector(config, train=train), push_every=1024)
            if resting:
                client.rest()
            client.adopt(state)
            start = np.datetime64("2004-03-01T00:00:00", "us")
            for lo in range(0, readings, 64):
                ts = start + np.arange(lo, lo + 64) * np.timedelta64(31, "s")
                client.process(rng.normal(20.0, 1.0, (64, config.n_columns)), ts=ts)
            clients.append(client)
        gc.collect()
        resident = (tracemalloc.get_traced_memory()[0] - before) / devices
    finally:
        tracemalloc.stop()
    detector = clients[0].detector
    return {
        "resident_bytes": round(resident),
        "checkpointed_bytes": len(detector.to_bytes(weights=not detector.weights_shared)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    args = parser.parse_args()
    config, train = model_for_fleet(INTEL_LAB), TrainConfig()
    state = GlobalState.initial(OnlineDetector(config).get_weights())
    measure(2, 64, True, state, config, train)  # imports and caches out of the figures
    results = {
        "model_parameters": OnlineDetector(config).model.network.size,
        "devices": args.devices,
        "phases": {
            phase: {
                "readings": n,
                "training": measure(args.devices, n, False, state, config, train),
                "resting": measure(args.devices, n, True, state, config, train),
            }
            for phase, n in PHASES.items()
        },
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
