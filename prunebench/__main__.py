"""`python -m prunebench ...` is the `prunebench` command; under torchrun, one process of a DDP run:

    torchrun --nproc_per_node 2 -m prunebench run --method dynthresh --task lenet300 --iterations 200
"""

from prunebench.cli import main

if __name__ == "__main__":
    main()
