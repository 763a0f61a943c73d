"""Offline evaluation of the triage policy on labelled data: how well the priority order puts
actionable, negative posts first (``ranking``), and how the router fares against helpdesk
baselines on a replay of real traffic with a simulated team (``replay``). Pure library code:
the benchmarks under ``benchmarks/`` read the data and call it; nothing here reads files."""
