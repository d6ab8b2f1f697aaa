using System.Buffers.Binary;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Ferry.Core.Security;

/// <summary>
/// Time-based one-time passwords (RFC 6238 over RFC 4226: HMAC-SHA1, 30 s steps, 6 digits), the second factor of console
/// sign-in; the parameters are the ones every authenticator app uses by default.
/// </summary>
public static class Totp
{
    public const int Digits = 6;

    /// <summary>How long one code is current.</summary>
    public static readonly TimeSpan Step = TimeSpan.FromSeconds(30);

    // One step either side: a phone's clock a little off, or a code typed just as it rolled over.
    private const int Window = 1;

    private const string Base32Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    /// <summary>A fresh 160-bit secret (the size RFC 4226 recommends for HMAC-SHA1).</summary>
    public static byte[] NewSecret() => RandomNumberGenerator.GetBytes(20);

    /// <summary>The time step <paramref name="at"/> falls in.</summary>
    public static long StepAt(DateTimeOffset at) => at.ToUnixTimeSeconds() / (long)Step.TotalSeconds;

    /// <summary>The code for <paramref name="step"/>.</summary>
    public static string Code(ReadOnlySpan<byte> secret, long step)
    {
        Span<byte> counter = stackalloc byte[8];
        BinaryPrimitives.WriteInt64BigEndian(counter, step);
        Span<byte> mac = stackalloc byte[20];
        HMACSHA1.HashData(secret, counter, mac);
        // Dynamic truncation (RFC 4226 §5.3).
        var offset = mac[^1] & 0x0f;
        var binary = BinaryPrimitives.ReadInt32BigEndian(mac[offset..]) & 0x7fffffff;
        return (binary % 1_000_000).ToString("D6", CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// The step whose code <paramref name="code"/> is, within one step of <paramref name="now"/> and later than
    /// <paramref name="lastUsedStep"/> (a code is good once: one overheard cannot be replayed); null when it is none.
    /// </summary>
    public static long? Verify(ReadOnlySpan<byte> secret, string? code, DateTimeOffset now, long lastUsedStep)
    {
        code = code?.Replace(" ", "", StringComparison.Ordinal);
        if (code is not { Length: Digits } || !code.All(char.IsAsciiDigit))
        {
            return null;
        }
        var current = StepAt(now);
        long? matched = null;
        // Every candidate is compared, in fixed time, so timing tells nothing about which step matched.
        for (var step = current - Window; step <= current + Window; step++)
        {
            if (CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(Code(secret, step)), Encoding.ASCII.GetBytes(code)) && step > lastUsedStep)
            {
                matched = step;
            }
        }
        return matched;
    }

    /// <summary>The secret as authenticator apps take it typed in: base32 without padding.</summary>
    public static string ToBase32(ReadOnlySpan<byte> secret)
    {
        var text = new StringBuilder((secret.Length * 8 + 4) / 5);
        int buffer = 0, bits = 0;
        foreach (var b in secret)
        {
            buffer = (buffer << 8) | b;
            bits += 8;
            while (bits >= 5)
            {
                text.Append(Base32Alphabet[(buffer >> (bits - 5)) & 31]);
                bits -= 5;
            }
        }
        if (bits > 0)
        {
            text.Append(Base32Alphabet[(buffer << (5 - bits)) & 31]);
        }
        return text.ToString();
    }

    /// <summary>Reads base32 (case, spaces and padding ignored); null when a character is not base32.</summary>
    public static byte[]? FromBase32(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var bytes = new List<byte>(text.Length * 5 / 8);
        int buffer = 0, bits = 0;
        foreach (var c in text.ToUpperInvariant())
        {
            if (c is ' ' or '=')
            {
                continue;
            }
            var value = Base32Alphabet.IndexOf(c, StringComparison.Ordinal);
            if (value < 0)
            {
                return null;
            }
            buffer = (buffer << 5) | value;
            bits += 5;
            if (bits >= 8)
            {
                bytes.Add((byte)(buffer >> (bits - 8)));
                bits -= 8;
            }
        }
        return [.. bytes];
    }

    /// <summary>The otpauth:// URI authenticator apps read from a QR code or a link.</summary>
    public static string ProvisioningUri(string issuer, string account, ReadOnlySpan<byte> secret)
        => $"otpauth://totp/{Uri.EscapeDataString(issuer)}:{Uri.EscapeDataString(account)}?secret={ToBase32(secret)}&issuer={Uri.EscapeDataString(issuer)}&algorithm=SHA1&digits={Digits}&period={(int)Step.TotalSeconds}";
}
