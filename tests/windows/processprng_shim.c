/*
 * Test scaffolding only: never shipped, never installed on a real server.
 *
 * Rust's standard library on Windows takes its randomness from ProcessPrng
 * in bcryptprimitives.dll. Debian 12's Wine (8.0) has that DLL without this
 * export, so an unpatched keyferry.exe does not start under it (exit 53,
 * "Library bcryptprimitives.dll ... not found"). .ci/windows.sh builds this
 * file as bcryptprimitives.dll and puts it beside the exe in a temporary
 * directory; real Windows (10 / Server 2016 and later) has the real DLL.
 *
 * It forwards to RtlGenRandom (SystemFunction036 in advapi32), the OS CSPRNG
 * that Wine implements, in chunks since that takes a 32-bit length.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll \
 *          processprng_shim.c -ladvapi32 -Wl,--kill-at
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}
