using System.Reflection;
using System.Runtime.InteropServices;
using Ferry.Quic.Interop;

namespace Ferry.Quic;

/// <summary>Loads ngtcp2, its GnuTLS crypto helper and GnuTLS once, and says whether QUIC can be used here.</summary>
public static class QuicSupport
{
    private const string Ngtcp2File = "libngtcp2.so.9";
    private const string CryptoFile = "libngtcp2_crypto_gnutls.so.2";
    private const string GnuTlsFile = "libgnutls.so.30";

    // 0.12.x is the ABI the struct mirrors were written against.
    private const int MinVersion = 0x000C00;
    private const int MaxVersionExclusive = 0x000D00;

    private static readonly Lazy<string?> s_load = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);
    private static nint s_ngtcp2;
    private static nint s_crypto;
    private static nint s_gnutls;
    private static string? s_version;

    /// <summary>True when the native libraries are present and of a supported version.</summary>
    public static bool IsSupported => s_load.Value is null;

    /// <summary>Why QUIC is unavailable, or null when it is supported.</summary>
    public static string? NotSupportedReason => s_load.Value;

    /// <summary>The loaded libngtcp2 version string, for example "0.12.1".</summary>
    public static string? Ngtcp2Version => IsSupported ? s_version : null;

    internal static nint CryptoHandle
    {
        get
        {
            ThrowIfNotSupported();
            return s_crypto;
        }
    }

    internal static void ThrowIfNotSupported()
    {
        if (s_load.Value is { } reason)
        {
            throw new PlatformNotSupportedException(reason);
        }
    }

    private static unsafe string? Load()
    {
        const string Packages = "install the Debian packages libngtcp2-9, libngtcp2-crypto-gnutls2 and libgnutls30 (apt-get install libngtcp2-9 libngtcp2-crypto-gnutls2)";
        if (!OperatingSystem.IsLinux())
        {
            return "Ferry's QUIC stack uses ngtcp2 + GnuTLS and is only supported on Linux.";
        }

        if (!NativeLibrary.TryLoad(GnuTlsFile, out s_gnutls))
        {
            return $"{GnuTlsFile} could not be loaded; {Packages}.";
        }

        if (!NativeLibrary.TryLoad(Ngtcp2File, out s_ngtcp2))
        {
            return $"{Ngtcp2File} could not be loaded; {Packages}.";
        }

        if (!NativeLibrary.TryLoad(CryptoFile, out s_crypto))
        {
            return $"{CryptoFile} could not be loaded; {Packages}.";
        }

        if (!NativeLibrary.TryGetExport(s_ngtcp2, "ngtcp2_version", out nint versionFn))
        {
            return $"{Ngtcp2File} has no ngtcp2_version export; {Packages}.";
        }

        var info = ((delegate* unmanaged<int, ngtcp2_info*>)versionFn)(0);
        if (info is null || info->version_num < MinVersion || info->version_num >= MaxVersionExclusive)
        {
            var found = info is null ? "unknown" : Marshal.PtrToStringUTF8((nint)info->version_str);
            return $"ngtcp2 {found} is loaded but Ferry mirrors the 0.12 ABI; {Packages} from Debian bookworm.";
        }

        s_version = Marshal.PtrToStringUTF8((nint)info->version_str);
        NativeLibrary.SetDllImportResolver(typeof(QuicSupport).Assembly, Resolve);
        return null;
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path) => name switch
    {
        Ngtcp2.Lib => s_ngtcp2,
        Ngtcp2Crypto.Lib => s_crypto,
        GnuTls.Lib => s_gnutls,
        _ => 0,
    };
}
