/*
 * Test scaffolding only: prints the security descriptor of each file named
 * on the command line as one SDDL line, "<path>\t<owner+DACL SDDL>", read
 * with the Windows API independently of keyferry's own code, so
 * .ci/windows.sh can check that files keyferry created carry the protected
 * owner-only DACL. Exit status 1 if any file's descriptor cannot be read.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -municode -o dacl_check.exe \
 *          dacl_check.c -ladvapi32
 */
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>

int wmain(int argc, wchar_t **argv)
{
    int status = 0;
    for (int i = 1; i < argc; i++) {
        PSECURITY_DESCRIPTOR sd = NULL;
        DWORD err = GetNamedSecurityInfoW(argv[i], SE_FILE_OBJECT,
                                          OWNER_SECURITY_INFORMATION |
                                              DACL_SECURITY_INFORMATION,
                                          NULL, NULL, NULL, NULL, &sd);
        if (err != ERROR_SUCCESS) {
            fwprintf(stderr, L"%ls\tGetNamedSecurityInfoW failed: %lu\n", argv[i], err);
            status = 1;
            continue;
        }
        LPWSTR text = NULL;
        if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(
                sd, SDDL_REVISION_1,
                OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, &text, NULL)) {
            fwprintf(stderr, L"%ls\tConvertSecurityDescriptorToString failed: %lu\n",
                     argv[i], GetLastError());
            status = 1;
        } else {
            wprintf(L"%ls\t%ls\n", argv[i], text);
            LocalFree(text);
        }
        LocalFree(sd);
    }
    return status;
}
