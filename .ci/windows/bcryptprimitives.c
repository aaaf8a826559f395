/*
 * A stand-in for Windows' bcryptprimitives.dll, for running Plugbay's Windows
 * build under Wine 8, which lacks it.
 *
 * Rust's standard library (since 1.78) takes its random bytes (the keys of every
 * HashMap) from ProcessPrng in bcryptprimitives.dll, imported when the program
 * loads: without it, Wine refuses to start any Rust program built for Windows.
 * This library exports ProcessPrng alone, filled from RtlGenRandom
 * (advapi32's SystemFunction036), which Wine has. Placed beside the .exe, it is
 * found before any system library. It is never part of a Plugbay release.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x10000000 ? 0x10000000 : (ULONG)size;
        if (!RtlGenRandom(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
