"""GPU restore (Jetson / any CUDA device): nvCOMP decode + torch transforms on the device.

Owns: the device-side inverse transforms (``transforms``) and the batched restore pipeline
(``restore``). Does not own nvCOMP itself (``appliance.codec.gpu``, torch-free) or hashing
(CPU cores verify every stored frame before it is decoded).
"""
