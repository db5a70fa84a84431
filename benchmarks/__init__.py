"""crm-mcp's benchmark suite: the six cases of the "large payloads and speed" issue, run against the
local backend and every vendor simulator over real loopback sockets, each figure a ratio to a
baseline measured side by side in the same run. `python -m benchmarks --help` shows the options;
the results land in `benchmarks/README.md`."""
