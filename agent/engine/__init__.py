"""Pure decision logic: rule evaluation and guardrails. No I/O, no clocks read directly."""
