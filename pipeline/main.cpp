#include "pipeline/cli.h"

int main(int argc, char** argv) { return hawada::cli_main(argc, argv); }
