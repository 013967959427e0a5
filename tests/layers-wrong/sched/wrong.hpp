// A deliberate include against the layers (sched/ may not include app/): the layer check must
// refuse this tree (tests/CMakeLists.txt, Layers.WrongIncludeIsRefused).
#pragma once
#include "app/config.hpp"
