/*
 * src/core/error.c: the error table and the close-code vocabulary.
 *
 * Layer: core. Depends on nothing but libc. The table itself lives in
 * include/duplex/duplex.h (DX_ERRNO_MAP) so that codes, names and messages
 * cannot drift apart.
 */
#include "duplex/duplex.h"

const char *dx_version(void) { return DX_VERSION_STRING; }

const char *dx_strerror(int err)
{
    switch (err) {
    case DX_OK:
        return "success";
#define DX__ERR_MSG(name, value, msg)                                                    \
    case DX_##name:                                                                      \
        return msg;
        DX_ERRNO_MAP(DX__ERR_MSG)
#undef DX__ERR_MSG
    default:
        return "unknown error";
    }
}

const char *dx_errname(int err)
{
    switch (err) {
    case DX_OK:
        return "DX_OK";
#define DX__ERR_NAME(name, value, msg)                                                   \
    case DX_##name:                                                                      \
        return "DX_" #name;
        DX_ERRNO_MAP(DX__ERR_NAME)
#undef DX__ERR_NAME
    default:
        return "DX_E?";
    }
}

int dx_close_code_for_error(int err)
{
    switch (err) {
    case DX_OK:
        return DX_CLOSE_NORMAL;
    case DX_EPROTO:
        return DX_CLOSE_PROTOCOL_ERROR;
    case DX_EUTF8:
        return DX_CLOSE_INVALID_DATA;
    case DX_ETOOBIG:
        return DX_CLOSE_TOO_BIG;
    case DX_EPOLICY:
        return DX_CLOSE_POLICY;
    case DX_EEXTENSION:
        return DX_CLOSE_MANDATORY_EXT;
    case DX_ETIMEDOUT:
    case DX_ECONNRESET:
    case DX_EIO:
    case DX_ETLS:
        return DX_CLOSE_ABNORMAL;
    default:
        return DX_CLOSE_INTERNAL_ERROR;
    }
}

int dx_close_code_valid(unsigned code)
{
    /* RFC 6455 §7.4.1/§7.4.2 and the IANA registry: 1004 is reserved, 1005,
     * 1006 and 1015 are for reporting only, 1016-2999 are unassigned or
     * reserved for future RFCs, 3000-4999 belong to libraries and apps. */
    if (code >= 1000 && code <= 1003)
        return 1;
    if (code >= 1007 && code <= 1014)
        return 1;
    return code >= 3000 && code <= 4999;
}

const char *dx_close_code_name(unsigned code)
{
    switch (code) {
    case DX_CLOSE_NORMAL:
        return "normal";
    case DX_CLOSE_GOING_AWAY:
        return "going away";
    case DX_CLOSE_PROTOCOL_ERROR:
        return "protocol error";
    case DX_CLOSE_UNSUPPORTED_DATA:
        return "unsupported data";
    case DX_CLOSE_NO_STATUS:
        return "no status";
    case DX_CLOSE_ABNORMAL:
        return "abnormal closure";
    case DX_CLOSE_INVALID_DATA:
        return "invalid payload data";
    case DX_CLOSE_POLICY:
        return "policy violation";
    case DX_CLOSE_TOO_BIG:
        return "message too big";
    case DX_CLOSE_MANDATORY_EXT:
        return "mandatory extension";
    case DX_CLOSE_INTERNAL_ERROR:
        return "internal error";
    case DX_CLOSE_SERVICE_RESTART:
        return "service restart";
    case DX_CLOSE_TRY_AGAIN_LATER:
        return "try again later";
    case DX_CLOSE_BAD_GATEWAY:
        return "bad gateway";
    case DX_CLOSE_TLS_HANDSHAKE:
        return "TLS handshake failure";
    default:
        if (code >= 3000 && code <= 3999)
            return "registered (3000-3999)";
        if (code >= 4000 && code <= 4999)
            return "private (4000-4999)";
        return "invalid";
    }
}
