# expect: {"status": "ok", "stdout": "4 499999500000\n"}
# wasm32: numpy's default integer (intp) is 32-bit, so large sums need dtype=np.int64. The
# code_interpreter description tells models so; this case keeps that sentence true.
import numpy as np
print(np.dtype(np.intp).itemsize, np.arange(10**6, dtype=np.int64).sum())
