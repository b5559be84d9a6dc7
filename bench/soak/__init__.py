"""The random-fault soak (``make soak``): a mixed load of every feature on a container
stack while the chaos scenarios fire at random, judged from the ledgers."""
