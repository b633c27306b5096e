"""The architectures as data (`config`: paper Tables 1, 3, 5 and `tiny`) and the module
sequence they make (`topology`: layer numbers, weight layout, FLOPs). The bottom of the
package: these modules import nothing of it, and every other part may import them."""
