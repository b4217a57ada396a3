/* The JACK process callback of quietcast, in C: no Python, no GIL.
 *
 * daemon/jackio.py owns everything here and states the real-time rules; this
 * file is the same algorithm as JackIO._process (the Python fallback), line
 * for line. It only copies port buffers into preallocated rings and out of
 * them, and bumps preallocated int64 counters: no allocation, no locks, no
 * system call (clock_gettime(CLOCK_MONOTONIC) is served by the vDSO), no
 * printing, no waiting on the engine (except while JACK freewheels, which
 * is not real time: then it waits for the engine, nanosleep, at most ~2 s).
 *
 * Plain C, with no Python C-API and no link-time dependency on libjack: the
 * Python side fills one struct qc_rt (allocated once per client with ctypes,
 * owned by JackIO) with the address of jack_port_get_buffer, the port
 * pointers, the ring addresses (numpy arrays), the counters and timings, and
 * registers qc_rt_process with jack_set_process_callback(client, qc_rt_process,
 * &rt). Built by setuptools as an optional extension module (pyproject.toml)
 * and loaded with ctypes.CDLL; it has no PyInit function and is never
 * imported. It also holds qc_jack_silent (at the end), the libjack message
 * function the daemon uses while it waits for a server.
 *
 * Memory ordering (single producer, single consumer over absolute frame
 * positions): in_pos is published with a release store after the input
 * copy; out_ready (written by the engine after its output) is read with an
 * acquire load; cycles is published with a release store after the timing
 * of the cycle is written. The other counters are only written here (relaxed
 * stores, so a reader never sees a torn value). latency is written by a
 * non-real-time thread (an aligned int64 store) and read relaxed.
 */

#define _POSIX_C_SOURCE 199309L /* clock_gettime and nanosleep under -std=c99 */

#include <stdint.h>
#include <string.h>
#include <time.h>

/* Bump when struct qc_rt or the counter slots change; jackio.py checks
 * qc_rt_layout against its own before it registers the callback. */
#define QC_RT_ABI 4

/* counter slots: as in daemon/buffers.py */
#define QC_CYCLES 0
#define QC_IN_POS 1
#define QC_OUT_READY 2
#define QC_DEADLINE_MISSES 3
#define QC_MISSED_FRAMES 4
#define QC_LATE_START 6

typedef void *(*qc_get_buffer_fn)(void *port, uint32_t nframes);

struct qc_rt {
    int64_t abi;                  /* QC_RT_ABI */
    qc_get_buffer_fn get_buffer;  /* libjack's jack_port_get_buffer */
    int64_t *counters;            /* [N_COUNTERS] */
    int64_t *timings;             /* [timing_slots] callback durations in ns */
    int64_t latency;              /* declared latency in frames (non-RT writer) */
    int64_t ring;                 /* frames per ring, a power of two */
    int64_t timing_slots;         /* a power of two */
    int64_t n_in;
    int64_t n_out;
    void *const *in_ports;        /* [n_in] jack_port_t* */
    float *const *in_base;        /* [n_in] input ring of each channel */
    void *const *out_ports;       /* [n_out] jack_port_t* */
    float *const *out_base;       /* [n_out] output ring of each output */
    float *const *dry_base;       /* [n_out] fallback: its channel's input ring, or silence */
    const int32_t *dry_silent;    /* [n_out] 1: the fallback is silence, read from offset 0 */
    const float *dry_gain;        /* [n_out] gain of the fallback: the output's gain, 0 while muted (engine writes) */
    float *ramp_d;                /* [n_out] the declick's offset at its start (RT only) */
    int64_t *ramp_k;              /* [n_out] frames of it already played; QC_DECLICK or more: none (RT only) */
    float *last_gain;             /* [n_out] the dry gain the last cycle ended with (RT only) */
    int32_t *last_dry;            /* [n_out] 1: the last cycle ended on the dry path (RT only) */
    int64_t freewheel;            /* 1 while JACK freewheels (an export): not real time, wait for the engine */
};

/* what jackio.py checks before it uses this library */
const int64_t qc_rt_layout[8] = {
    QC_RT_ABI, (int64_t)sizeof(struct qc_rt), QC_CYCLES, QC_IN_POS, QC_OUT_READY,
    QC_DEADLINE_MISSES, QC_MISSED_FRAMES, QC_LATE_START,
};

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ring write with wrap-around (JackIO._copy_in) */
static inline void copy_in(float *dst_base, const float *src, int64_t off, int64_t frames, int64_t ring)
{
    int64_t first = frames < ring - off ? frames : ring - off;
    memcpy(dst_base + off, src, 4 * (size_t)first);
    if (first < frames)
        memcpy(dst_base, src + first, 4 * (size_t)(frames - first));
}

/* ring read with wrap-around into dst[dst_off:] (JackIO._copy_out) */
static inline void copy_out(float *dst, const float *src_base, int64_t off, int64_t frames, int64_t dst_off,
                            int64_t ring)
{
    int64_t first = frames < ring - off ? frames : ring - off;
    memcpy(dst + dst_off, src_base + off, 4 * (size_t)first);
    if (first < frames)
        memcpy(dst + dst_off + first, src_base, 4 * (size_t)(frames - first));
}

/* the dry fallback's value of one input frame: NaN/Inf -> 0 and the rest clipped to +-64 (as the
 * engine's sanitize()), times the output's gain; v - v is NaN for NaN and +-Inf (no -ffast-math here) */
static inline float dry_value(float v, float gain)
{
    v = (v - v == 0.0f) ? (v > 64.0f ? 64.0f : v < -64.0f ? -64.0f : v) : 0.0f;
    return v * gain;
}

static inline void copy_dry(float *dst, const float *src_base, int64_t off, int64_t frames, int64_t dst_off,
                            int64_t mask, float gain)
{
    for (int64_t i = 0; i < frames; i++)
        dst[dst_off + i] = dry_value(src_base[(off + i) & mask], gain);
}

#define QC_DECLICK 64 /* frames over which the step at a processed/dry switch (or a new dry gain) fades */

/* the declick over dst[b..e): a ramp of offset d that has played k frames adds d * (1 - (k + 1) / N) to
 * its next frame, down to 0 after N frames */
static inline void ramp(float *dst, int64_t b, int64_t e, float d, int64_t k)
{
    for (int64_t i = b; i < e && k + (i - b) < QC_DECLICK; i++)
        dst[i] += d * (1.0f - (float)(k + (i - b) + 1) / (float)QC_DECLICK);
}

/* what the ramp still adds to the frame after k played frames */
static inline float ramp_left(float d, int64_t k)
{
    return k < QC_DECLICK ? d * (1.0f - (float)k / (float)QC_DECLICK) : 0.0f;
}

/* a JackProcessCallback: int (*)(jack_nframes_t nframes, void *arg) */
int qc_rt_process(uint32_t nframes, void *arg)
{
    struct qc_rt *rt = (struct qc_rt *)arg;
    int64_t t0 = now_ns();
    int64_t *cnt = rt->counters;
    const int64_t frames = nframes, ring = rt->ring, mask = rt->ring - 1;
    int64_t pos = __atomic_load_n(&cnt[QC_IN_POS], __ATOMIC_RELAXED); /* only written here */
    int64_t off = pos & mask;
    int64_t i, j;

    for (i = 0; i < rt->n_in; i++) {
        const float *src = (const float *)rt->get_buffer(rt->in_ports[i], nframes);
        if (src)
            copy_in(rt->in_base[i], src, off, frames, ring);
    }
    __atomic_store_n(&cnt[QC_IN_POS], pos + frames, __ATOMIC_RELEASE);
    int64_t ready = __atomic_load_n(&cnt[QC_OUT_READY], __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&rt->freewheel, __ATOMIC_RELAXED)) { /* freewheeling is not real time: wait (<= 2 s) */
        const struct timespec nap = {0, 50000};
        while (ready - pos < frames && now_ns() - t0 < 2000000000LL) {
            nanosleep(&nap, NULL);
            ready = __atomic_load_n(&cnt[QC_OUT_READY], __ATOMIC_ACQUIRE);
        }
    }
    int64_t good = ready - pos; /* frames of this cycle the engine has delivered */
    const int64_t g = good < 0 ? 0 : (good > frames ? frames : good); /* of them, this cycle plays g */
    const int64_t latency = __atomic_load_n(&rt->latency, __ATOMIC_RELAXED);
    const int64_t dry_off = (pos + g - latency) & mask; /* output frame t plays input frame t - latency */
    for (j = 0; j < rt->n_out; j++) {
        float *dst = (float *)rt->get_buffer(rt->out_ports[j], nframes);
        if (!dst || !frames)
            continue;
        const float *dry = rt->dry_base[j];
        const int32_t silent = rt->dry_silent[j];
        const float gain = ((const volatile float *)rt->dry_gain)[j]; /* the engine writes it */
        if (g)
            copy_out(dst, rt->out_base[j], off, g, 0, ring);
        if (g < frames)
            copy_dry(dst, dry, silent ? 0 : dry_off, frames - g, g, mask, gain);
        /* the declick. At a change of source between two frames (the processed ring, or the dry path
         * at a gain), the old source's value minus the new one's at the frame before is a step; it fades
         * over QC_DECLICK frames, added to what is left of an earlier ramp, which goes on across cycles.
         * Nothing changed: the step is exactly 0 and nothing is added. */
        float d = rt->ramp_d[j];
        int64_t k = rt->ramp_k[j];
        /* (a background stem's dry path is the silence ring: 0 at any offset) */
        const float was = rt->last_dry[j] ? dry_value(dry[(pos - 1 - latency) & mask], rt->last_gain[j])
                                          : rt->out_base[j][(pos - 1) & mask];
        const float now = g ? rt->out_base[j][(pos - 1) & mask] : dry_value(dry[(pos - 1 - latency) & mask], gain);
        const float step0 = was - now;
        if (step0 != 0.0f) {
            d = ramp_left(d, k) + step0;
            k = 0;
        }
        if (g > 0 && g < frames) { /* processed, then dry from frame g */
            ramp(dst, 0, g, d, k);
            k += g;
            const float step = rt->out_base[j][(pos + g - 1) & mask]
                               - dry_value(dry[(pos + g - 1 - latency) & mask], gain);
            if (step != 0.0f) {
                d = ramp_left(d, k) + step;
                k = 0;
            }
            ramp(dst, g, frames, d, k);
            k += frames - g;
        } else {
            ramp(dst, 0, frames, d, k);
            k += frames;
        }
        rt->ramp_d[j] = d;
        rt->ramp_k[j] = k < QC_DECLICK ? k : QC_DECLICK;
        rt->last_dry[j] = g < frames;
        rt->last_gain[j] = gain;
    }
    if (g < frames) {
        if (ready) {
            __atomic_store_n(&cnt[QC_DEADLINE_MISSES], cnt[QC_DEADLINE_MISSES] + 1, __ATOMIC_RELAXED);
            __atomic_store_n(&cnt[QC_MISSED_FRAMES], cnt[QC_MISSED_FRAMES] + (frames - g), __ATOMIC_RELAXED);
        } else {
            __atomic_store_n(&cnt[QC_LATE_START], cnt[QC_LATE_START] + 1, __ATOMIC_RELAXED);
        }
    }
    int64_t c = cnt[QC_CYCLES];
    rt->timings[c & (rt->timing_slots - 1)] = now_ns() - t0;
    __atomic_store_n(&cnt[QC_CYCLES], c + 1, __ATOMIC_RELEASE);
    return 0;
}

/* A libjack error and info function that drops the message. The daemon sets
 * it (jack_set_error_function, jack_set_info_function) around its attempts
 * to reach a JACK server that is not there, which libjack reports in five
 * lines on stderr each time (twice a second, thousands of lines an hour in
 * the journal). Plain C on purpose: libjack calls this function on whichever
 * of its threads reports something, the real-time one included, where a
 * Python callback would have to take the GIL (a daemon hung at its stop with
 * one). */
void qc_jack_silent(const char *msg)
{
    (void)msg;
}
