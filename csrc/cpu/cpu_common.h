#pragma once
// Compiler attributes shared by the CPU kernels.
//
// The extension is built with generic x86-64 flags (it must load on any machine), so the
// float hot loops are compiled for AVX-512 / AVX2+FMA / baseline and the loader picks one
// (target_clones, an ifunc). The helpers those loops call are always_inline so that they are
// compiled inside each clone, for its vector width.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HNRNN_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HNRNN_CPU_CLONES
#endif
#if defined(__GNUC__)
#define HNRNN_INLINE inline __attribute__((always_inline))
#else
#define HNRNN_INLINE inline
#endif
