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
#define QC_RT_ABI 2

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
    float *last;                  /* [n_out] last sample written (RT only: the declick) */
    int64_t last_dry;             /* 1: the last cycle ended on the dry path (RT only) */
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

#define QC_DECLICK 64 /* frames over which the offset at a processed/dry switch decays */

/* a switch of source at frame b, where what was played one frame before differs by d from what the
 * new source gave there: dst[b + k] += d * (1 - (k + 1) / QC_DECLICK), k < QC_DECLICK */
static inline void declick(float *dst, int64_t b, int64_t frames, float d)
{
    for (int64_t i = b; i < frames && i < b + QC_DECLICK; i++)
        dst[i] += d * (1.0f - (float)(i - b + 1) / (float)QC_DECLICK);
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
    if (__atomic_load_n(&rt->freewheel, __ATOMIC_RELAXED)) { /* freewheeling is not real time: wait (<= ~2 s) */
        const struct timespec nap = {0, 50000};
        for (int k = 0; k < 40000 && ready - pos < frames; k++) {
            nanosleep(&nap, NULL);
            ready = __atomic_load_n(&cnt[QC_OUT_READY], __ATOMIC_ACQUIRE);
        }
    }
    int64_t good = ready - pos; /* frames of this cycle the engine has delivered */
    const int64_t g = good < 0 ? 0 : (good > frames ? frames : good); /* of them, this cycle plays g */
    const int64_t starts_dry = g == 0, ends_dry = g < frames;
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
        /* the declick: at each switch between the processed ring and the dry path, what was played one
         * frame before minus what the new source gave there decays over QC_DECLICK frames (0 where the
         * two agree, e.g. at strength 0) */
        if (starts_dry != rt->last_dry) {
            const float was = starts_dry ? (silent ? 0.0f : dry_value(dry[(pos - 1 - latency) & mask], gain))
                                         : rt->out_base[j][(pos - 1) & mask];
            declick(dst, 0, frames, rt->last[j] - was);
        }
        if (g > 0 && g < frames)
            declick(dst, g, frames,
                    dst[g - 1] - (silent ? 0.0f : dry_value(dry[(pos + g - 1 - latency) & mask], gain)));
        rt->last[j] = dst[frames - 1];
    }
    rt->last_dry = ends_dry;
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
