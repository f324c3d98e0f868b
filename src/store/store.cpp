// Store is an interface; shared helpers for implementations live here.
#include "store/store.h"
