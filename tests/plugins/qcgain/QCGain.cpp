// QC Test Gain: out = gain * (in delayed by delay_samples); fault=1 outputs NaN.
// Latency is declared as delay_samples, so a host can compensate.
// Built with QC_LOOKAHEAD=1 ("QC Test Lookahead", qcgain_la): one more, continuous,
// parameter lookahead_ms [0, 50] adds round(lookahead_ms * rate / 1000) samples to
// the delay and the latency (as a look-ahead limiter's time does).
#include "DistrhoPlugin.hpp"
#include <cmath>
#include <cstring>
#include <limits>

START_NAMESPACE_DISTRHO

#ifndef QC_LOOKAHEAD
#define QC_LOOKAHEAD 0
#endif
enum { kGainDb, kDelay, kFault, kLookahead, kParamCount = QC_LOOKAHEAD ? 4 : 3 };
static constexpr uint32_t kMaxDelay = 4800, kRing = 16384;   // kRing: power of two > kMaxDelay + 50 ms

class QCGain : public Plugin {
public:
    QCGain() : Plugin(kParamCount, 0, 0), fParams{} { activate(); }
protected:
    const char* getLabel() const override { return QC_LOOKAHEAD ? "qcgain_la" : QC_CHANNELS == 1 ? "qcgain_mono" : "qcgain"; }
    const char* getDescription() const override { return "quietcast test plugin: gain, pure delay, NaN fault"; }
    const char* getMaker() const override { return "quietcast"; }
    const char* getLicense() const override { return "ISC"; }
    uint32_t getVersion() const override { return d_version(1, 0, 0); }
    int64_t getUniqueId() const override { return d_cconst('Q', 'c', QC_LOOKAHEAD ? 'L' : 'G', QC_CHANNELS == 1 ? 'm' : 's'); }

    // No units: pedalboard names a parameter "<name> <unit>" (gain_db + dB -> gain_db_db).
    void initParameter(uint32_t i, Parameter& p) override {
        p.hints = kParameterIsAutomatable;
        p.ranges.def = p.ranges.min = 0.f;
        switch (i) {
        case kGainDb: p.name = p.symbol = "gain_db"; p.ranges.min = -60.f; p.ranges.max = 24.f; break;
        case kDelay: p.name = p.symbol = "delay_samples"; p.hints |= kParameterIsInteger; p.ranges.max = kMaxDelay; break;
        case kFault: p.name = p.symbol = "fault"; p.hints |= kParameterIsBoolean | kParameterIsInteger; p.ranges.max = 1.f; break;
        case kLookahead: p.name = p.symbol = "lookahead_ms"; p.ranges.max = 50.f; break;
        }
    }
    float getParameterValue(uint32_t i) const override { return fParams[i]; }
    void setParameterValue(uint32_t i, float v) override { fParams[i] = v; }

    void activate() override { std::memset(fRing, 0, sizeof(fRing)); fPos = 0; }

    void run(const float** inputs, float** outputs, uint32_t frames) override {
        uint32_t delay = (uint32_t)std::lround(fParams[kDelay]);
#if QC_LOOKAHEAD
        delay += (uint32_t)std::lround(fParams[kLookahead] * getSampleRate() / 1000.0);
#endif
        setLatency(delay);   // DPF tells a VST3 host via restartComponent(kLatencyChanged)
        const bool fault = fParams[kFault] >= 0.5f;
        const float gain = std::pow(10.f, fParams[kGainDb] / 20.f);
        for (uint32_t n = 0; n < frames; ++n, fPos = (fPos + 1) & (kRing - 1))
            for (int c = 0; c < QC_CHANNELS; ++c) {
                fRing[c][fPos] = inputs[c][n];   // write before read: delay 0 is a pass-through
                outputs[c][n] = fault ? std::numeric_limits<float>::quiet_NaN()
                                      : gain * fRing[c][(fPos - delay) & (kRing - 1)];
            }
    }
private:
    float fParams[kParamCount];
    float fRing[QC_CHANNELS][kRing];
    uint32_t fPos;
    DISTRHO_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR(QCGain)
};

Plugin* createPlugin() { return new QCGain(); }

END_NAMESPACE_DISTRHO
