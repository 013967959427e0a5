#include "vmm/cli.hpp"

int main(int argc, char** argv) { return kvmscale::vmm::cli_main(argc, argv); }
