// QC Test Gain: a tiny DPF plugin used by quietcast's tests (built by ../build.py).
// DPF's VST3 wrapper only accepts its one declared bus layout, so the channel
// count is fixed at compile time: QC_CHANNELS=2 (default, "qcgain") or 1 ("qcgain_mono");
// QC_LOOKAHEAD=1 (stereo) adds a continuous lookahead_ms ("qcgain_la").
#ifndef DISTRHO_PLUGIN_INFO_H_INCLUDED
#define DISTRHO_PLUGIN_INFO_H_INCLUDED

#ifndef QC_CHANNELS
#define QC_CHANNELS 2
#endif

#define DISTRHO_PLUGIN_BRAND   "quietcast"
#if defined(QC_LOOKAHEAD) && QC_LOOKAHEAD
#define DISTRHO_PLUGIN_NAME    "QC Test Lookahead"
#define DISTRHO_PLUGIN_URI     "urn:quietcast:qcgain_la"
#define DISTRHO_PLUGIN_CLAP_ID "org.quietcast.qcgain_la"
#elif QC_CHANNELS == 1
#define DISTRHO_PLUGIN_NAME    "QC Test Gain Mono"
#define DISTRHO_PLUGIN_URI     "urn:quietcast:qcgain_mono"
#define DISTRHO_PLUGIN_CLAP_ID "org.quietcast.qcgain_mono"
#else
#define DISTRHO_PLUGIN_NAME    "QC Test Gain"
#define DISTRHO_PLUGIN_URI     "urn:quietcast:qcgain"
#define DISTRHO_PLUGIN_CLAP_ID "org.quietcast.qcgain"
#endif

#define DISTRHO_PLUGIN_HAS_UI       0
#define DISTRHO_PLUGIN_IS_RT_SAFE   1
#define DISTRHO_PLUGIN_NUM_INPUTS   QC_CHANNELS
#define DISTRHO_PLUGIN_NUM_OUTPUTS  QC_CHANNELS
#define DISTRHO_PLUGIN_WANT_LATENCY 1   // latency == delay_samples (+ look-ahead), via setLatency()

#endif
