"""Reading values from hidden states: capture, linear probes per block, the gate, and the
minimal perturbation the probes define (ConVA's eps and delta)."""
