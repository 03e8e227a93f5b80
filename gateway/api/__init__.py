"""HTTP routes: wiring only, one module per surface; the logic lives in the serving layer."""
