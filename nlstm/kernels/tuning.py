"""Every tuning constant of nlstm, each with the rule or measurement that sets it and the
hardware fact it rests on. Measurements are from the 2-core AMD EPYC (AVX-512) nlstm is
developed on unless a line says otherwise; on another CPU, re-measure before changing one.

Two kinds, used differently:

- Compile-time (the kernels' sizes): a kernel reads these as constants when Numba compiles
  it, so changing one here recompiles the kernels (this file is part of the kernel cache's
  key, see ``config``) and patching it at run time changes nothing already compiled. The
  kernels import them by name.
- Run-time (the host's choices between paths): read as ``tuning.NAME`` at each call by
  nlstm's Python code, so a test or a benchmark may set them on this module
  (``monkeypatch.setattr(tuning, "NAME", v)``) and the next call follows.

No constant here is chosen by CPU name: where a rule depends on a cache size or a vector
width, the comment names which.
"""

# ---- memory layout ------------------------------------------------------------------------
# One cache line on every current x86 and ARM server core (64 bytes; Apple's M cores have
# 128, where these only cost some false sharing between the barrier's counters).
CACHE_LINE_BYTES = 64

# Run-time. Weights and workspace buffers start on a cache line (64 bytes, one AVX-512
# vector). NumPy aligns big blocks to 16 bytes only, so the kernels' vector loads straddled
# two lines: with W_hh aligned, S inference took 123 µs instead of 149, long 11.6 ms instead
# of 12.1, M 2.45 ms instead of 2.49 (same process, alternating).
ALIGN_BYTES = CACHE_LINE_BYTES

# ---- threads (nlstm._threads, nlstm.recurrent) -----------------------------------------------
# Run-time. Below this much recurrent work (multiply-adds) a second thread costs more than it
# saves. The rule: the work must outweigh handing half of it to another core (a thread's
# start and the join, some µs); the crossover was measured once and not recorded.
MIN_PARALLEL_WORK = 1_000_000

# Run-time. Below this many multiply-adds a whole-sequence product (input projection, weight
# gradients, dx) is one NumPy call on the calling thread (nothing to compile for a first
# small call); from it on it runs on the panel tiles (``tiles``), split over nlstm's threads.
# The rule as for MIN_PARALLEL_WORK, at a single core's rate (~100 GFLOP/s with AVX-512 FMA:
# 8M multiply-adds ≈ 0.1 ms).
SMALL_GEMM = 8_000_000

# Run-time. Weights are packed for the tiles over nlstm's threads (``recurrent._pack``, each
# thread its own panels) from this cost on: elements, counted 3 times for a transpose's
# (``pack_panels_of_transpose``, whose scattered stores make an element 3-4x dearer). Zen 4,
# µs serial / split over 2, in cache and out of it: the transpose of 128 x 512 34 / 23 and
# 99 / 93, of 256 x 1024 135 / 75 and 337 / 195; pack_gates of 128 x 512 11 / 11 and 46 / 64
# (a loss), of 256 x 1024 35 / 26 and 127 / 96. A second thread costs 5-6 µs to start.
PARALLEL_PACK = 196_608

# Compile-time. The finiteness check (``checks``) splits an array over threads in chunks of
# this many elements. Run-time: it is NumPy's ``isfinite`` below NUMBA_CHECK elements, runs
# on the calling thread below PARALLEL_CHECK, else over the threads. Zen 4, float32, µs for
# NumPy / one thread / two, in cache and out of it: 65,536 elements 6.6 / 6.8 / 9.9 and
# 27 / 39 / 57; 204,800 20 / 15 / 14 and 50 / 50 / 93; 819,200 66 / 40 / 52 and 172 / 109 / 94.
CHECK_CHUNK = 16_384
NUMBA_CHECK = 131_072
PARALLEL_CHECK = 524_288

# Run-time. The input projection of a ragged batch runs each batch row over its own steps
# (the panel tiles), skipping the padding, when that skips more than this many
# multiply-adds per row (a row's own pass costs a few microseconds, some 100k
# multiply-adds); else one product over all the rows.
PER_ROW_MIN_SAVING = 200_000

# Run-time. A one-row batch splits its hidden units over the threads (a spin barrier per
# step) when each step has this many recurrent multiply-adds (the barrier and the exchange
# of h cost about 0.3 µs a step, a cross-core cache-line round trip: at H = 64 the split
# lost, at H = 128 it won) and the whole sequence this many (starting the second thread
# costs 15-50 µs).
UNITS_MIN_STEP = 32_768
UNITS_MIN_WORK = 25_000_000

# Compile-time. One-row steps fetch the next step's row of gates ahead (``tiles.prefetch_span``)
# when the call's gates exceed this: the projection wrote them before the recurrence, and past
# L2 (1-2 MB a core on current x86 and ARM server cores) each step waited for its row's lines.
# On Zen 4, alternating with and without: long inference (4000 steps, 8 MB of gates) 0.96-0.98x
# the time; S (100 KB, in L2) 1.02x with them (the requests cost more than they saved).
PREFETCH_GATES_BYTES = 1 << 20

# Compile-time. The unit split's parts start at multiples of this many units: one 512-bit
# vector of float32 (the widest vector of any current CPU), so each part's gate loops
# start on a vector boundary (two 256-bit vectors with AVX2).
UNIT_ALIGN = 16

# Compile-time. Spins with x86's ``pause`` before a part waiting at the unit split's barrier
# starts yielding its CPU: some tens of µs (``pause`` takes from ~10 to ~140 cycles by core),
# longer than any step the split runs (UNITS_MIN_STEP), shorter than a scheduler slice.
SPINS_BEFORE_YIELD = 2000

# ---- the packed-weight tiles (nlstm.kernels.tiles) -------------------------------------------
# Compile-time. A tile's slice of packed weights (depth × 4 vectors) is read once per tile of
# rows; sums run over depth chunks of at most this many bytes of weights, so that the slice
# stays in L1 (32 KB or more on current x86 and ARM cores) across every tile of rows of a
# step. Unchunked, L's 64 KB per unit block came from L2 for each tile of rows: 10-20% slower.
PANEL_BYTES = 24 * 1024

# Compile-time. The input projection's rows go through the panels in blocks whose slice of
# the input stays in L2 across all the panels (256 KB: half or less of current x86 and ARM
# cores' L2); unblocked, XL's 5 MB input would stream from L3 once per panel.
ROW_BLOCK_BYTES = 256 * 1024
