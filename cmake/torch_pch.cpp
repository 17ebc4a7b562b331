// Empty: the translation unit that builds the precompiled LibTorch headers (core/CMakeLists.txt).
