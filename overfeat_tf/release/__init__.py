"""The released OverFeat nets: weight conversion (`convert`) and features at any layer
(`features`, the release's `-L n` numbering)."""
