"""The ten workloads of the benchmark (docs/bench.md), each with a sync form (for executors)
and an async form.

Every task has a CPU phase and an I/O phase. The I/O is a request to the loopback server
(:mod:`gil_adapt.bench.loopback`) with the workload's latency, or ``time.sleep`` /
``asyncio.sleep`` for ``mixed`` and ``micro`` (as in the benchmark's reference task, and the
prototype's sweep). The CPU phase is written with the library such code uses. BLAS and
ONNX Runtime run one thread per task (the child sets the environment; sessions are made
with one intra-op and one inter-op thread) so that the concurrency under test is the
executor's.

Tasks are module-level functions taking no arguments, so a ``ProcessPoolExecutor`` can
pickle them; what they need (server address, calibrated CPU loop, model path) is set per
process by :func:`configure` (also the process pool's initializer). Per-process state
(sessions, weights, filter banks) is built once, on first use, under a lock.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from . import loopback

# ---- per-process settings -------------------------------------------------------------


@dataclass
class Settings:
    server: Optional[Tuple[str, int]] = None
    loop_per_ms: float = 20000.0     # iterations of the pure-Python loop per ms of CPU
    model_path: Optional[str] = None
    latency_scale: float = 1.0       # multiplies every I/O delay


_settings = Settings()
_state: Dict[str, Any] = {}
_state_lock = threading.Lock()


def configure(settings: Dict[str, Any]) -> None:
    """Sets this process's settings (server, loop calibration, model path, latency scale)."""
    global _settings
    server = settings.get("server")
    _settings = Settings(server=tuple(server) if server else None,
                         loop_per_ms=float(settings.get("loop_per_ms", 20000.0)),
                         model_path=settings.get("model_path"),
                         latency_scale=float(settings.get("latency_scale", 1.0)))


def _once(key: str, build: Callable[[], Any]) -> Any:
    value = _state.get(key)
    if value is None:
        with _state_lock:
            value = _state.get(key)
            if value is None:
                value = build()
                _state[key] = value
    return value


def _server() -> Tuple[str, int]:
    if _settings.server is None:
        raise RuntimeError("no loopback server configured for this workload")
    return _settings.server  # type: ignore[return-value]


def _delay(ms: float) -> float:
    return ms / 1000.0 * _settings.latency_scale


def spin(n: int) -> int:
    """Pure-Python CPU work (holds the GIL): ``n`` loop iterations."""
    x = 0
    for _ in range(n):
        x += 1
    return x


def calibrate_loop(repeats: int = 5, n: int = 200_000, warm_s: float = 1.0) -> float:
    """Iterations of :func:`spin` per millisecond of thread CPU time (median of ``repeats``),
    timed after ``warm_s`` of CPU in the loop: timed cold, the loop reads markedly slower
    than it runs once the CPU is at its sustained clock, and every task would then take
    less CPU than its nominal figure."""
    t_warm = time.thread_time() + warm_s
    while time.thread_time() < t_warm:
        spin(n // 10)
    rates = []
    for _ in range(repeats):
        t0 = time.thread_time()
        spin(n)
        dt = time.thread_time() - t0
        if dt > 0:
            rates.append(n / (dt * 1000.0))
    rates.sort()
    return rates[len(rates) // 2] if rates else 20000.0


def _cpu_ms(ms: float) -> None:
    spin(int(_settings.loop_per_ms * ms))


def _get(kind: int, delay_ms: float, size: int, payload: bytes = b"",
         chunks: int = 1) -> List[bytes]:
    return loopback.request(_server(), kind, _delay(delay_ms), size, payload, chunks)


async def _aget(kind: int, delay_ms: float, size: int, payload: bytes = b"",
                chunks: int = 1) -> List[bytes]:
    return await loopback.arequest(_server(), kind, _delay(delay_ms), size, payload, chunks)


# ---- 1-3: the reference tasks ----------------------------------------------------------

MIXED_CPU_MS, MIXED_IO_MS = 10.0, 50.0
MICRO_CPU_MS, MICRO_IO_MS = 0.1, 1.0
IO_MS, IO_BYTES = 50.0, 1024


def mixed() -> int:
    _cpu_ms(MIXED_CPU_MS)
    time.sleep(_delay(MIXED_IO_MS))
    return 0


async def mixed_async() -> int:
    _cpu_ms(MIXED_CPU_MS)
    await asyncio.sleep(_delay(MIXED_IO_MS))
    return 0


def micro() -> int:
    _cpu_ms(MICRO_CPU_MS)
    time.sleep(_delay(MICRO_IO_MS))
    return 0


async def micro_async() -> int:
    _cpu_ms(MICRO_CPU_MS)
    await asyncio.sleep(_delay(MICRO_IO_MS))
    return 0


def io() -> int:
    return len(_get(loopback.RAW, IO_MS, IO_BYTES)[0])


async def io_async() -> int:
    return len((await _aget(loopback.RAW, IO_MS, IO_BYTES))[0])


# ---- 4. vision: frame over loopback, NumPy preprocessing + convolution -----------------

FRAME_H, FRAME_W = 240, 320
VISION_MS = 20.0


def _vision_cpu(frame: bytes) -> int:
    import numpy as np

    img = np.frombuffer(frame, np.uint8).reshape(FRAME_H, FRAME_W, 3).astype(np.float32)
    img /= 255.0
    gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16.0          # separable 5x5 Gaussian
    pad = np.pad(gray, 2, mode="edge")
    rows = sum(k[i] * pad[:, i:i + FRAME_W] for i in range(5))
    blur = sum(k[i] * rows[i:i + FRAME_H, :] for i in range(5))
    gx = (blur[:-2, 2:] + 2 * blur[1:-1, 2:] + blur[2:, 2:]
          - blur[:-2, :-2] - 2 * blur[1:-1, :-2] - blur[2:, :-2])   # Sobel
    gy = (blur[2:, :-2] + 2 * blur[2:, 1:-1] + blur[2:, 2:]
          - blur[:-2, :-2] - 2 * blur[:-2, 1:-1] - blur[:-2, 2:])
    mag = np.hypot(gx, gy)
    edges = mag > (mag.mean() + 2.0 * mag.std())
    small = img.reshape(FRAME_H // 2, 2, FRAME_W // 2, 2, 3).mean(axis=(1, 3))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    chw = np.ascontiguousarray(((small - mean) / std).transpose(2, 0, 1))
    hist = np.histogram(gray, bins=32, range=(0.0, 1.0))[0]
    return int(edges.sum()) + int(hist.argmax()) + int(chw.shape[0])


def vision() -> int:
    return _vision_cpu(_get(loopback.RAW, VISION_MS, FRAME_H * FRAME_W * 3)[0])


async def vision_async() -> int:
    return _vision_cpu((await _aget(loopback.RAW, VISION_MS, FRAME_H * FRAME_W * 3))[0])


# ---- 5. audio: chunk over loopback, log-mel features with NumPy FFT ---------------------

AUDIO_RATE, AUDIO_N_FFT, AUDIO_HOP, AUDIO_MELS = 16000, 512, 160, 40
AUDIO_MS = 20.0


def _mel_bank() -> Tuple[Any, Any, Any]:
    import numpy as np

    def hz_to_mel(f: Any) -> Any:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: Any) -> Any:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    n_bins = AUDIO_N_FFT // 2 + 1
    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(AUDIO_RATE / 2), AUDIO_MELS + 2)
    bins = np.floor((AUDIO_N_FFT + 1) * mel_to_hz(mels) / AUDIO_RATE).astype(int)
    bank = np.zeros((AUDIO_MELS, n_bins), np.float32)
    for m in range(1, AUDIO_MELS + 1):
        lo, mid, hi = bins[m - 1], bins[m], bins[m + 1]
        for b in range(lo, mid):
            bank[m - 1, b] = (b - lo) / max(1, mid - lo)
        for b in range(mid, hi):
            bank[m - 1, b] = (hi - b) / max(1, hi - mid)
    window = np.hanning(AUDIO_N_FFT).astype(np.float32)
    n_mfcc = 13
    k = np.arange(AUDIO_MELS)
    dct = np.cos(np.pi / AUDIO_MELS * (k + 0.5)[None, :] * np.arange(n_mfcc)[:, None])
    return bank, window, dct.astype(np.float32)


def _audio_cpu(chunk: bytes) -> float:
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    bank, window, dct = _once("mel", _mel_bank)
    x = np.frombuffer(chunk, np.int16).astype(np.float32) / 32768.0
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])                     # pre-emphasis
    frames = sliding_window_view(np.pad(x, AUDIO_N_FFT // 2), AUDIO_N_FFT)[::AUDIO_HOP]
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 / AUDIO_N_FFT
    logmel = np.log(power @ bank.T + 1e-6)
    mfcc = logmel @ dct.T
    delta = np.gradient(mfcc, axis=0)
    feats = np.concatenate([mfcc, delta], axis=1)
    feats -= feats.mean(axis=0)
    return float(np.abs(feats).mean())


def audio() -> float:
    return _audio_cpu(_get(loopback.RAW, AUDIO_MS, AUDIO_RATE * 2)[0])


async def audio_async() -> float:
    return _audio_cpu((await _aget(loopback.RAW, AUDIO_MS, AUDIO_RATE * 2))[0])


# ---- 6. sensor fusion: a Kalman filter on small matrices --------------------------------

SENSOR_MS, SENSOR_STEPS = 5.0, 20


def _kalman_model() -> Dict[str, Any]:
    import numpy as np

    dt = 0.01
    f = np.eye(6)
    f[0, 3] = f[1, 4] = f[2, 5] = dt
    h = np.zeros((3, 6))
    h[0, 0] = h[1, 1] = h[2, 2] = 1.0
    return {"F": f, "H": h, "Q": np.eye(6) * 1e-4, "R": np.eye(3) * 0.05, "I": np.eye(6)}


def _sensor_cpu(reading: bytes) -> float:
    import numpy as np

    m = _once("kalman", _kalman_model)
    f, h, q, r, eye = m["F"], m["H"], m["Q"], m["R"], m["I"]
    z_all = np.frombuffer(reading, np.uint16)[: SENSOR_STEPS * 3].reshape(SENSOR_STEPS, 3)
    z_all = z_all.astype(np.float64) / 6553.5
    x = np.zeros(6)
    p = np.eye(6)
    for z in z_all:
        x = f @ x                                   # predict
        p = f @ p @ f.T + q
        y = z - h @ x                               # update
        s = h @ p @ h.T + r
        k = p @ h.T @ np.linalg.inv(s)
        x = x + k @ y
        p = (eye - k @ h) @ p
    return float(x[0])


def sensor_fusion() -> float:
    return _sensor_cpu(_get(loopback.RAW, SENSOR_MS, SENSOR_STEPS * 3 * 2)[0])


async def sensor_fusion_async() -> float:
    return _sensor_cpu((await _aget(loopback.RAW, SENSOR_MS, SENSOR_STEPS * 3 * 2))[0])


# ---- 7. rag: vector-store query + LLM-API call, JSON parse/build in pure Python ----------

RAG_DOCS, RAG_QUERY_MS, RAG_LLM_MS, RAG_TOP = 40, 30.0, 80.0, 5
RAG_QUESTION = "how do I reset the sensor gateway after a firmware update"


def _rag_rank(body: bytes) -> bytes:
    docs = json.loads(body)["matches"]
    query = set(RAG_QUESTION.split()) | {"kalo", "mira", "tenka", "sorvel"}
    scored = []
    for d in docs:
        words = d["text"].split()
        overlap = sum(1 for w in words if w in query)
        norm = sum(v * v for v in d["embedding"]) ** 0.5
        scored.append((overlap / (1 + len(words)) + d["score"] / (1.0 + norm), d))
    scored.sort(key=lambda t: t[0], reverse=True)
    context = "\n\n".join(f"[{d['id']}] {d['title']} ({d['metadata']['source']}, "
                          f"p.{d['metadata']['page']})\n{d['text']}"
                          for _, d in scored[:RAG_TOP])
    return json.dumps({"model": "edge-llm", "max_tokens": 256, "temperature": 0.2,
                       "messages": [{"role": "system",
                                     "content": "Answer from the context only."},
                                    {"role": "user",
                                     "content": f"Context:\n{context}\n\nQuestion: "
                                                f"{RAG_QUESTION}"}]}).encode()


def _rag_answer(body: bytes) -> int:
    answer = json.loads(body)
    text = answer["choices"][0]["message"]["content"]
    return len(text.split()) + answer["usage"]["completion_tokens"]


def rag() -> int:
    prompt = _rag_rank(_get(loopback.DOCS, RAG_QUERY_MS, RAG_DOCS)[0])
    return _rag_answer(_get(loopback.ANSWER, RAG_LLM_MS, 0, payload=prompt)[0])


async def rag_async() -> int:
    prompt = _rag_rank((await _aget(loopback.DOCS, RAG_QUERY_MS, RAG_DOCS))[0])
    return _rag_answer((await _aget(loopback.ANSWER, RAG_LLM_MS, 0, payload=prompt))[0])


# ---- 8. slm: token stream over loopback, attention/MLP-shaped matrix products ----------

SLM_VOCAB, SLM_D, SLM_HEADS, SLM_FF, SLM_LAYERS = 4096, 256, 4, 1024, 2
SLM_CHUNKS, SLM_CHUNK_BYTES, SLM_MS = 16, 8, 40.0       # 16 chunks of 4 token ids


def _slm_weights() -> Dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(1)
    f32 = np.float32
    w: Dict[str, Any] = {"emb": rng.standard_normal((SLM_VOCAB, SLM_D)).astype(f32) * 0.02}
    for i in range(SLM_LAYERS):
        w[f"qkv{i}"] = rng.standard_normal((SLM_D, 3 * SLM_D)).astype(f32) / SLM_D ** 0.5
        w[f"o{i}"] = rng.standard_normal((SLM_D, SLM_D)).astype(f32) / SLM_D ** 0.5
        w[f"up{i}"] = rng.standard_normal((SLM_D, SLM_FF)).astype(f32) / SLM_D ** 0.5
        w[f"down{i}"] = rng.standard_normal((SLM_FF, SLM_D)).astype(f32) / SLM_FF ** 0.5
    return w


def _slm_cpu(frames: List[bytes]) -> int:
    import numpy as np

    w = _once("slm", _slm_weights)
    ids = np.frombuffer(b"".join(frames), np.uint16) % SLM_VOCAB
    x = w["emb"][ids]                                             # (T, D)
    t = x.shape[0]
    hd = SLM_D // SLM_HEADS
    mask = np.triu(np.full((t, t), -1e9, np.float32), 1)
    for i in range(SLM_LAYERS):
        hnorm = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)   # RMSNorm
        q, k, v = np.split(hnorm @ w[f"qkv{i}"], 3, axis=1)
        q = q.reshape(t, SLM_HEADS, hd).transpose(1, 0, 2)
        k = k.reshape(t, SLM_HEADS, hd).transpose(1, 2, 0)
        v = v.reshape(t, SLM_HEADS, hd).transpose(1, 0, 2)
        att = q @ k / np.sqrt(hd) + mask
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(t, SLM_D)
        x = x + ctx @ w[f"o{i}"]
        hnorm = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)
        up = hnorm @ w[f"up{i}"]
        up = up * (1.0 / (1.0 + np.exp(-1.702 * up)))                 # GELU (sigmoid form)
        x = x + up @ w[f"down{i}"]
    logits = x[-1] @ w["emb"].T
    return int(logits.argmax())


def slm() -> int:
    return _slm_cpu(_get(loopback.TOKENS, SLM_MS, SLM_CHUNK_BYTES, chunks=SLM_CHUNKS))


async def slm_async() -> int:
    return _slm_cpu(await _aget(loopback.TOKENS, SLM_MS, SLM_CHUNK_BYTES, chunks=SLM_CHUNKS))


# ---- 9. analytics: pandas time-series aggregation of a telemetry batch ------------------

ANALYTICS_ROWS, ANALYTICS_MS = 2000, 20.0


def _analytics_cpu(body: bytes) -> int:
    import io as _io

    import pandas as pd

    df = pd.read_csv(_io.BytesIO(body))
    df["ts"] = pd.to_datetime(df["ts"], unit="ms")
    summary = df.groupby("device").agg(temp_mean=("temperature", "mean"),
                                       temp_p95=("temperature", lambda s: s.quantile(0.95)),
                                       hum_max=("humidity", "max"),
                                       volt_min=("voltage", "min"))
    per10s = (df.set_index("ts").groupby("device")[["temperature", "humidity"]]
              .resample("10s").mean())
    rolling = df.groupby("device")["voltage"].transform(lambda s: s.rolling(20).mean())
    z = (df["temperature"] - df["temperature"].mean()) / df["temperature"].std()
    anomalies = int((z.abs() > 2.5).sum()) + int((df["voltage"] < rolling - 0.1).sum())
    return anomalies + len(per10s) + len(summary)


def analytics() -> int:
    return _analytics_cpu(_get(loopback.CSV, ANALYTICS_MS, ANALYTICS_ROWS)[0])


async def analytics_async() -> int:
    return _analytics_cpu((await _aget(loopback.CSV, ANALYTICS_MS, ANALYTICS_ROWS))[0])


# ---- 10. onnx-mobilenetv2: ONNX Runtime inference, frame over loopback ------------------

ONNX_MS = 10.0


def _session() -> Any:
    import onnxruntime as ort

    if not _settings.model_path:
        raise RuntimeError("no MobileNetV2 model path configured")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(_settings.model_path, so, providers=["CPUExecutionProvider"])


def _onnx_cpu(frame: bytes) -> int:
    import numpy as np

    session = _once("onnx", _session)
    img = np.frombuffer(frame, np.uint8).reshape(224, 224, 3).astype(np.float32) / 255.0
    img = (img - np.array([0.485, 0.456, 0.406], np.float32)) / \
        np.array([0.229, 0.224, 0.225], np.float32)
    x = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
    logits = session.run(None, {"input": x})[0]
    return int(logits.argmax())


def onnx_mobilenetv2() -> int:
    return _onnx_cpu(_get(loopback.RAW, ONNX_MS, 224 * 224 * 3)[0])


async def onnx_mobilenetv2_async() -> int:
    return _onnx_cpu((await _aget(loopback.RAW, ONNX_MS, 224 * 224 * 3))[0])


# ---- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    sync: Callable[[], Any]
    async_: Callable[[], Awaitable[Any]]
    requires: Tuple[str, ...] = ()
    server: bool = True
    needs_model: bool = False
    io: str = field(default="")


WORKLOADS: Dict[str, Workload] = {w.name: w for w in [
    Workload("mixed", "10 ms pure-Python CPU + 50 ms sleep (the reference)", mixed,
             mixed_async, server=False, io="sleep 50 ms"),
    Workload("micro", "0.1 ms pure-Python CPU + 1 ms sleep", micro, micro_async,
             server=False, io="sleep 1 ms"),
    Workload("io", "I/O only: 1 KiB over loopback, 50 ms latency (control)", io, io_async,
             io="loopback 50 ms"),
    Workload("vision", "320x240 frame over loopback; NumPy normalise, Gaussian, Sobel, "
             "resize, histogram", vision, vision_async, ("numpy",), io="loopback 20 ms"),
    Workload("audio", "1 s of 16 kHz audio over loopback; NumPy FFT log-mel + MFCC",
             audio, audio_async, ("numpy",), io="loopback 20 ms"),
    Workload("sensor-fusion", "20 readings over loopback; 6-state Kalman filter (NumPy "
             "small matrices)", sensor_fusion, sensor_fusion_async, ("numpy",),
             io="loopback 5 ms"),
    Workload("rag", "vector-store query (40 docs JSON) + LLM-API call over loopback; "
             "pure-Python ranking and JSON", rag, rag_async, io="loopback 30 + 80 ms"),
    Workload("slm", "64-token stream over loopback; 2-layer attention/MLP matrix products "
             "(d=256)", slm, slm_async, ("numpy",), io="loopback 40 ms stream"),
    Workload("analytics", "2000-row telemetry CSV over loopback; pandas groupby, resample, "
             "rolling", analytics, analytics_async, ("numpy", "pandas"),
             io="loopback 20 ms"),
    Workload("onnx-mobilenetv2", "224x224 frame over loopback; ONNX Runtime MobileNetV2 "
             "(1 thread)", onnx_mobilenetv2, onnx_mobilenetv2_async,
             ("numpy", "onnx", "onnxruntime"), needs_model=True, io="loopback 10 ms"),
]}


def missing_modules(workload: Workload) -> List[str]:
    """The modules a workload needs that cannot be imported here."""
    import importlib.util

    return [m for m in workload.requires if importlib.util.find_spec(m) is None]
