using System.Security.Cryptography;
using System.Text;

namespace Ferry.Core.Tokens;

/// <summary>Opaque bearer secrets with a recognisable prefix (so leaked ones are easy to scan for) and their stored SHA-256 hashes.</summary>
public static class TokenFormat
{
    public const string AccessPrefix = "ferry_at_";
    public const string RefreshPrefix = "ferry_rt_";
    public const string AdminKeyPrefix = "ferry_ak_";
    public const string ServiceAccountKeyPrefix = "ferry_sk_";
    public const string DevicePrefix = "ferry_dt_";

    public static string New(string prefix) => prefix + Base64Url(RandomNumberGenerator.GetBytes(32));

    /// <summary>Only hashes are stored, so a copy of the database grants nothing.</summary>
    public static string Hash(string token) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(token)));

    public static bool FixedTimeEquals(string a, string b)
        => CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));

    public static string NewId(string prefix)
    {
        Span<byte> bytes = stackalloc byte[8];
        RandomNumberGenerator.Fill(bytes);
        return prefix + Convert.ToHexStringLower(bytes);
    }

    private static string Base64Url(byte[] bytes)
        => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
