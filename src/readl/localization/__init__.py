"""ReAL (paper Sec. 4.1): attention capture, token scores S_T / S_I, thresholds and anomaly maps."""
