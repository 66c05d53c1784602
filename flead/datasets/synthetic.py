"""A seeded, Intel-Lab-like sensor fleet written in the raw text format of the real `data.txt`.

Each line is ``date time epoch moteid temperature humidity light voltage``, space separated, no
header, so generated data goes through the same parser as the real deployment. Numbers imitate the
motes' quantisation (temperature on the SHT11 0.0098 C grid, voltage = 593.92 / ADC count, light in
0.46 lux steps) and are printed with six significant digits like the original (``24`` not ``24.0``).

The fleet is generated a chunk of devices at a time (all of a device's days at once), vectorised
over devices and time, so memory stays bounded by ``CHUNK_CELLS`` whatever the fleet size.
Fleet-wide draws (device parameters, weather) come from their own random streams, so the same
arguments always produce the same bytes, with one file or one file per device, gzipped or not.
"""

from __future__ import annotations

import gzip as gzip_module
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl

EPOCH_SECONDS = 31  # one reading per mote per epoch
CHUNK_CELLS = 100_000  # device x epoch cells generated at once; bounds memory
DAY_S = 86_400

TEMP_SATURATED = 122.153  # -38.4 + 0.0098 * 16383: the SHT11's 14-bit maximum, what dying motes report
HUMIDITY_COLLAPSED = (-4.0, -3.91901)  # what the real dying motes report for humidity
LIGHT_STEP = 0.46
LIGHT_SATURATED = 1847.36
VOLTAGE_ADC = 593.92  # the real file's voltages are all 593.92 / n for an integer n
FAILURE_VOLTAGE = 2.3  # below it a mote's temperature reading runs away


@dataclass(frozen=True)
class DeviceFailure:
    """Ground truth for one failing mote."""

    mote_id: int
    start: datetime  # UTC: the battery crosses ~2.3 V and the temperature starts to climb
    battery_dead: datetime | None  # UTC: no readings from then on; None if it outlives the window


@dataclass(frozen=True)
class SyntheticFleet:
    """What `generate_fleet` wrote, and the ground truth of the failures it planted."""

    paths: tuple[Path, ...]
    n_devices: int
    start: date
    days: int
    seed: int
    lines: int
    failures: tuple[DeviceFailure, ...]

    @property
    def failing_devices(self) -> tuple[int, ...]:
        return tuple(f.mote_id for f in self.failures)

    @property
    def failure_starts(self) -> dict[int, datetime]:
        return {f.mote_id: f.start for f in self.failures}

    def failures_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "mote_id": [f.mote_id for f in self.failures],
                "failure_start": [f.start for f in self.failures],
                "battery_dead": [f.battery_dead for f in self.failures],
            },
            schema={
                "mote_id": pl.Int64(),
                "failure_start": pl.Datetime("us", "UTC"),
                "battery_dead": pl.Datetime("us", "UTC"),
            },
        )


def generate_fleet(
    out_dir: Path | str,
    n_devices: int = 54,
    days: int = 38,
    start: date = date(2004, 2, 28),
    seed: int = 0,
    per_device_files: bool = False,
    gzip: bool = False,
    progress: Callable[[int, int], None] | None = None,
    *,
    failing_fraction: float = 0.3,
    missing_field_rate: float = 0.0,
) -> SyntheticFleet:
    """Write motes 1..n_devices over `days` days from `start` to `out_dir` in the raw format.

    One file ``data.txt`` (or one ``NodeNN.txt`` per mote), ``.gz`` if `gzip`. A share
    `failing_fraction` of the motes runs its battery down within the window and fails like the real
    ones; `missing_field_rate` is the share of lines whose trailing fields are cut off, as in the
    full original file. `progress(done, total)` is called with devices written.
    """
    if n_devices < 1 or days < 1:
        raise ValueError("n_devices and days must be at least 1")
    if not 0.0 <= failing_fraction <= 1.0 or not 0.0 <= missing_field_rate <= 1.0:
        raise ValueError("failing_fraction and missing_field_rate must be within [0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    fleet_seq, weather_seq, chunks_seq = np.random.SeedSequence(seed).spawn(3)
    n_epochs = math.ceil(days * DAY_S / EPOCH_SECONDS)
    motes = _draw_motes(np.random.default_rng(fleet_seq), n_devices, days, failing_fraction)
    weather = _draw_weather(np.random.default_rng(weather_seq), days, n_epochs)
    t0 = datetime(start.year, start.month, start.day, tzinfo=UTC)
    suffix = ".txt.gz" if gzip else ".txt"
    if per_device_files:
        paths = tuple(out / f"Node{m:02d}{suffix}" for m in range(1, n_devices + 1))
    else:
        paths = (out / f"data{suffix}",)

    per_chunk = max(1, CHUNK_CELLS // n_epochs)
    lines = 0
    if progress:
        progress(0, n_devices)
    with ExitStack() as stack:
        single = None if per_device_files else stack.enter_context(_open(paths[0], gzip))
        for index, first in enumerate(range(0, n_devices, per_chunk)):
            devices = np.arange(first, min(first + per_chunk, n_devices))
            rng = np.random.default_rng(_child(chunks_seq, index))
            readings = _simulate_chunk(rng, motes, devices, weather, days, n_epochs, start)
            text = _format_lines(readings, t0, rng, missing_field_rate)
            lines += text.height
            if single is not None:
                _write(text, single)
            else:
                bounds = [*np.searchsorted(readings["device"], devices).tolist(), text.height]
                for k, device in enumerate(devices.tolist()):
                    with _open(paths[device], gzip) as fh:
                        _write(text.slice(bounds[k], bounds[k + 1] - bounds[k]), fh)
            if progress:
                progress(int(devices[-1]) + 1, n_devices)

    failures = tuple(
        DeviceFailure(
            mote_id=i + 1,
            start=t0 + timedelta(microseconds=int(motes.fail_us[i])),
            battery_dead=None
            if motes.death_us[i] >= days * DAY_S * 1_000_000
            else t0 + timedelta(microseconds=int(motes.death_us[i])),
        )
        for i in np.flatnonzero(motes.failing).tolist()
    )
    return SyntheticFleet(paths, n_devices, start, days, seed, lines, failures)


def _child(parent: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    # The chunk's stream depends on its index only, not on how many chunks were spawned before.
    return np.random.SeedSequence(parent.entropy, spawn_key=(*parent.spawn_key, index))


def _open(path: Path, compressed: bool) -> IO[bytes]:
    if compressed:  # mtime=0 keeps the same arguments giving the same bytes
        return gzip_module.GzipFile(path, "wb", compresslevel=6, mtime=0)
    return open(path, "wb")


def _write(text: pl.DataFrame, fh: IO[bytes]) -> None:
    if text.height:
        text.write_csv(fh, include_header=False, quote_style="never")


@dataclass(frozen=True)
class _Motes:
    """Per-device parameters, one array entry per device (index = mote id - 1)."""

    clock_offset_s: np.ndarray
    drop_p: np.ndarray
    gaps_per_day: np.ndarray
    t_base: np.ndarray
    t_sun: np.ndarray
    t_hvac: np.ndarray
    t_noise: np.ndarray
    wander_amp: np.ndarray
    wander_period_h: np.ndarray  # (n, 3)
    wander_phase: np.ndarray  # (n, 3)
    h_base: np.ndarray
    h_per_degree: np.ndarray
    h_noise: np.ndarray
    light_night: np.ndarray
    light_window: np.ndarray
    light_office: np.ndarray
    light_evening: np.ndarray
    office_on_h: np.ndarray
    office_off_h: np.ndarray
    v_start: np.ndarray
    v_dead: np.ndarray
    failing: np.ndarray
    fail_us: np.ndarray  # when the battery reaches FAILURE_VOLTAGE (beyond the window if healthy)
    climb_h: np.ndarray  # hours from failure start until the temperature reading saturates
    humidity_delay_h: np.ndarray  # hours from failure start until humidity collapses
    death_us: np.ndarray


def _draw_motes(rng: np.random.Generator, n: int, days: int, failing_fraction: float) -> _Motes:
    window_s = days * DAY_S
    failing = np.zeros(n, dtype=bool)
    failing[rng.choice(n, size=round(failing_fraction * n), replace=False)] = True
    # A failing battery is sized to die inside the window, a healthy one well after it.
    fail_s = np.where(failing, rng.uniform(0.45, 0.8, n), rng.uniform(1.5, 3.0, n)) * window_s
    v_start = rng.uniform(2.68, 2.80, n)
    v_dead = rng.uniform(1.95, 2.08, n)
    climb_h = rng.uniform(1.0, 6.0, n)
    # Solve _battery_voltage(x) = v_dead for x = t / fail_s.
    share = (v_start - v_dead) / (v_start - FAILURE_VOLTAGE)
    death_s = fail_s * (-0.6 + np.sqrt(0.36 + 1.6 * share)) / 0.8
    death_s = np.maximum(death_s, fail_s + (climb_h + 6.0) * 3600)  # a failure is always observable
    window_light = rng.random(n) < 0.15  # motes by a window see direct sunlight
    return _Motes(
        clock_offset_s=rng.uniform(0.0, 8.0, n),
        drop_p=np.clip(rng.beta(3.0, 3.0, n), 0.1, 0.85),
        gaps_per_day=0.2 + rng.gamma(2.0, 0.4, n),
        t_base=rng.normal(19.5, 0.8, n),
        t_sun=np.where(window_light, rng.uniform(3.0, 6.0, n), rng.uniform(0.5, 2.0, n)),
        t_hvac=rng.uniform(2.5, 5.0, n),
        t_noise=rng.uniform(0.02, 0.08, n),
        wander_amp=rng.uniform(0.1, 0.4, n),
        wander_period_h=rng.uniform(2.0, 30.0, (n, 3)),
        wander_phase=rng.uniform(0.0, 2 * np.pi, (n, 3)),
        h_base=rng.normal(39.0, 2.5, n),
        h_per_degree=rng.uniform(1.0, 1.8, n),
        h_noise=rng.uniform(0.05, 0.3, n),
        light_night=LIGHT_STEP * rng.integers(1, 5, n),
        light_window=np.where(window_light, rng.uniform(800.0, 2500.0, n), rng.uniform(10.0, 150.0, n)),
        light_office=rng.uniform(150.0, 650.0, n),
        light_evening=rng.uniform(40.0, 110.0, n),
        office_on_h=rng.normal(7.3, 0.3, n),
        office_off_h=rng.normal(18.3, 0.7, n),
        v_start=v_start,
        v_dead=v_dead,
        failing=failing,
        fail_us=np.rint(fail_s * 1e6).astype(np.int64),
        climb_h=climb_h,
        humidity_delay_h=rng.uniform(12.0, 48.0, n),
        death_us=np.rint(death_s * 1e6).astype(np.int64),
    )


@dataclass(frozen=True)
class _Weather:
    """Fleet-wide conditions per epoch: the whole building shares them."""

    temperature: np.ndarray
    humidity: np.ndarray
    sunshine: np.ndarray


def _draw_weather(rng: np.random.Generator, days: int, n_epochs: int) -> _Weather:
    at = np.arange(n_epochs) * (EPOCH_SECONDS / DAY_S)
    knots = np.arange(days + 2) - 0.5  # one value per day, interpolated from midday to midday

    def daily(values: np.ndarray) -> np.ndarray:
        return np.interp(at, knots, values)

    return _Weather(
        temperature=daily(rng.normal(0.0, 1.5, days + 2)),
        humidity=daily(rng.normal(0.0, 4.0, days + 2)),
        sunshine=daily(rng.uniform(0.3, 1.0, days + 2)),
    )


def _battery_voltage(x: np.ndarray) -> np.ndarray:
    """Share of (start - FAILURE_VOLTAGE) lost at x = t / failure time: slow, then faster."""
    return 0.6 * x + 0.4 * x * x


def _smooth_window(hour: np.ndarray, on: np.ndarray, off: np.ndarray, width_h: float) -> np.ndarray:
    return 1.0 / ((1.0 + np.exp(-(hour - on) / width_h)) * (1.0 + np.exp((hour - off) / width_h)))


def _simulate_chunk(
    rng: np.random.Generator,
    motes: _Motes,
    devices: np.ndarray,
    weather: _Weather,
    days: int,
    n_epochs: int,
    start: date,
) -> dict[str, np.ndarray]:
    """The readings of `devices` that reach the base station, device-major, in time order."""
    n = devices.size
    window_us = days * DAY_S * 1_000_000

    # Which epochs are delivered: random drops, outages of minutes to hours, a dead battery.
    delivered = rng.random((n, n_epochs)) >= motes.drop_p[devices, None]
    n_gaps = rng.poisson(motes.gaps_per_day[devices] * days)
    gap_device = np.repeat(np.arange(n), n_gaps)
    gap_start = rng.integers(0, n_epochs, gap_device.size)
    gap_s = np.minimum(rng.lognormal(np.log(900.0), 1.2, gap_device.size), 12 * 3600)
    gap_end = np.minimum(gap_start + np.ceil(gap_s / EPOCH_SECONDS).astype(np.int64), n_epochs)
    edges = np.zeros((n, n_epochs + 1), dtype=np.int16)
    np.add.at(edges, (gap_device, gap_start), 1)
    np.add.at(edges, (gap_device, gap_end), -1)
    delivered &= np.cumsum(edges[:, :-1], axis=1, dtype=np.int16) == 0
    del edges
    local, epoch = np.nonzero(delivered)
    del delivered
    dev = devices[local]

    # Sub-second radio jitter, now and then a late packet; never enough to reorder a mote's readings.
    late = rng.random(local.size) < 0.02
    jitter_s = rng.exponential(0.3, local.size) + late * rng.uniform(1.0, 10.0, local.size)
    ts_us = np.rint((epoch * EPOCH_SECONDS + motes.clock_offset_s[dev] + jitter_s) * 1e6).astype(np.int64)
    keep = (ts_us < window_us) & (ts_us < motes.death_us[dev])
    local, epoch, dev, ts_us = local[keep], epoch[keep], dev[keep], ts_us[keep]
    k = local.size

    seconds = ts_us / 1e6
    hour = (seconds % DAY_S) / 3600.0
    day = (ts_us // (DAY_S * 1_000_000)).astype(np.int64)
    weekday = (start.weekday() + day) % 7 < 5
    sun = np.clip(np.sin(np.pi * (hour - 6.0) / 12.0), 0.0, None)
    sunshine = weather.sunshine[epoch]

    # Office life: per device and day the lights and heating come on and off at slightly different
    # times; a weekday room stays dark now and then, a weekend room is lit now and then.
    on = motes.office_on_h[devices, None] + rng.normal(0.0, 0.3, (n, days))
    off = motes.office_off_h[devices, None] + rng.normal(0.0, 0.5, (n, days))
    used = np.where(rng.random((n, days)) < 0.1, 0.0, 1.0)
    weekend_used = rng.random((n, days)) < 0.1
    week = (start.weekday() + np.arange(days)) % 7 < 5
    used = np.where(week[None, :], used, weekend_used * 1.0)
    on, off, used = on[local, day], off[local, day], used[local, day]
    occupied = used * _smooth_window(hour, on, off, 0.15)
    hvac = np.where(weekday, 1.0, 0.25) * _smooth_window(hour, on - 0.5, off, 0.6)

    wander = np.zeros(k)
    for c in range(3):
        period_s = motes.wander_period_h[dev, c] * 3600.0
        wander += np.sin(2 * np.pi * seconds / period_s + motes.wander_phase[dev, c])
    ambient = (
        motes.t_base[dev]
        + motes.t_sun[dev] * sun * sunshine
        + motes.t_hvac[dev] * hvac
        + weather.temperature[epoch]
        + motes.wander_amp[dev] * wander / np.sqrt(3.0)
    )
    temperature = np.clip(ambient + rng.normal(0.0, 1.0, k) * motes.t_noise[dev], -5.0, 50.0)
    humidity = np.clip(
        motes.h_base[dev]
        - motes.h_per_degree[dev] * (ambient - 22.0)
        + weather.humidity[epoch]
        + rng.normal(0.0, 1.0, k) * motes.h_noise[dev],
        1.0,
        95.0,
    )
    evening = np.where(weekday, 1.0, 0.0) * _smooth_window(hour, off, np.full(k, 23.0), 0.3) * used
    light = (
        motes.light_night[dev]
        + motes.light_window[dev] * sun**1.5 * sunshine
        + motes.light_office[dev] * occupied
        + motes.light_evening[dev] * evening
    ) * rng.normal(1.0, 0.03, k)

    fail_s = motes.fail_us[dev] / 1e6
    voltage = (
        motes.v_start[dev]
        - (motes.v_start[dev] - FAILURE_VOLTAGE) * _battery_voltage(seconds / fail_s)
        + 0.004 * (ambient - 22.0)
        + rng.normal(0.0, 0.003, k)
    )

    # The real failure: past ~2.3 V the temperature reading climbs to the sensor's maximum within
    # hours and the humidity reading collapses to about -4 % a day or two later.
    since_h = np.where(motes.failing[dev], (seconds - fail_s) / 3600.0, -1.0)
    climb = np.clip(since_h / motes.climb_h[dev], 0.0, 1.0) ** 1.5
    temperature = temperature + (TEMP_SATURATED - temperature) * climb
    temperature -= (climb >= 1.0) * (rng.random(k) < 0.1) * rng.exponential(0.4, k)
    collapse = np.clip((since_h - motes.humidity_delay_h[dev]) / 6.0, 0.0, 1.0)
    collapsed = np.where(rng.random(k) < 0.3, HUMIDITY_COLLAPSED[0], HUMIDITY_COLLAPSED[1])
    humidity = humidity * (1.0 - collapse) + collapsed * collapse

    return {
        "device": dev,
        "epoch": epoch,
        "ts_us": ts_us,
        "temperature": -38.4 + 0.0098 * np.clip(np.rint((temperature + 38.4) / 0.0098), 0, 16383),
        "humidity": humidity,
        "light": LIGHT_STEP * np.clip(np.rint(light / LIGHT_STEP), 1, LIGHT_SATURATED / LIGHT_STEP),
        "voltage": VOLTAGE_ADC / np.rint(VOLTAGE_ADC / np.clip(voltage, 1.0, 3.2)),
    }


def _six_digits(values: np.ndarray) -> pl.Series:
    """Print like C's %g: six significant digits, no trailing zeros, no exponent in our ranges."""
    values = np.where(np.abs(values) < 1e-4, 0.0, values)
    magnitude = np.floor(np.log10(np.abs(values), out=np.zeros_like(values), where=values != 0))
    scale = 10.0 ** (5 - magnitude)
    # integer / power of ten is the double nearest to the decimal, so the shortest repr is exact
    rounded = np.round(values * scale) / scale
    return pl.Series(rounded).cast(pl.String).str.strip_suffix(".0")


def _format_lines(
    readings: dict[str, np.ndarray], t0: datetime, rng: np.random.Generator, missing_field_rate: float
) -> pl.DataFrame:
    k = readings["ts_us"].size
    t0_us = int(t0.timestamp()) * 1_000_000
    # Fractional seconds keep the microseconds without trailing zeros, like the real file.
    stamp = (
        pl.Series(readings["ts_us"] + t0_us)
        .cast(pl.Datetime("us"))
        .dt.strftime("%Y-%m-%d %H:%M:%S%.6f")
        .str.strip_chars_end("0")
        .str.strip_chars_end(".")
    )
    fields = [
        stamp,
        pl.Series(readings["epoch"]).cast(pl.String),
        pl.Series(readings["device"] + 1).cast(pl.String),
        *(_six_digits(readings[name]) for name in ("temperature", "humidity", "light", "voltage")),
    ]
    frame = pl.DataFrame({f"f{i}": s for i, s in enumerate(fields)})
    if missing_field_rate > 0:
        # A cut-off line loses its last 1, 2 or all 4 measurements.
        cut = np.where(rng.random(k) < missing_field_rate, rng.choice([1, 2, 4], k), 0)
        frame = frame.with_columns(
            pl.when(pl.Series(cut >= 4 - i)).then(None).otherwise(pl.col(f"f{i + 3}")).alias(f"f{i + 3}")
            for i in range(4)
        )
    return frame.select(pl.concat_str(pl.all(), separator=" ", ignore_nulls=True).alias("line"))
