"""The worker side: the Celery app (``celery``), thin tasks (``tasks``), ``pipelines`` (database
plus models: what the tasks call) and ``ml`` (torch and numpy only, no Django).

hitl imports none of this but ``workers.celery`` (to send tasks by name), so the web never loads
torch; it is a Django app only for its management commands (``manage.py demo``).
"""

import os

# OpenMP threads that spin-wait between parallel regions make torch on a busy CPU (more runnable
# threads than cores: a Celery worker next to the web and the database) several times slower
# (benchmarks/omp_wait.py). Passive waiting may cost a little per parallel region on an idle
# machine (not measured: ours are shared). It must be set before torch loads its OpenMP runtime,
# so it lives here, where every worker process (Celery, manage.py demo) enters first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
