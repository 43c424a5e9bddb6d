"""Fixed sets of runs with a verdict or a report: the CI regression check and the DT paper's reproduction
(its tables, Fig. 1 and Fig. 4). Suites train only through `prunebench.running.runner`."""
