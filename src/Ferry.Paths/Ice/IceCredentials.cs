using System.Security.Cryptography;
using Ferry.Stun;

namespace Ferry.Paths.Ice;

/// <summary>
/// One end's short-term credentials for connectivity checks (RFC 8445 §5.3): checks sent to this end carry
/// "Ufrag:theirUfrag" as USERNAME and are signed with <see cref="Password"/>, which only signaling reveals.
/// </summary>
public sealed class IceCredentials
{
    private const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";

    private IceCredentials(string ufrag, string password)
    {
        Ufrag = ufrag;
        Password = password;
        Key = StunCredentials.ShortTermKey(password);
    }

    public string Ufrag { get; }

    public string Password { get; }

    /// <summary>The MESSAGE-INTEGRITY key.</summary>
    internal byte[] Key { get; }

    /// <summary>Fresh random credentials: 8 ice-chars of user fragment, 24 of password (RFC 8445 asks for at least 4 and 22).</summary>
    public static IceCredentials Create() => new(RandomNumberGenerator.GetString(Alphabet, 8), RandomNumberGenerator.GetString(Alphabet, 24));

    /// <summary>The peer's credentials as signaling delivered them; null when they are not of the shape this side generates.</summary>
    public static IceCredentials? FromPeer(string? ufrag, string? password)
        => ufrag is { Length: >= 4 and <= 32 } && password is { Length: >= 22 and <= 64 } && ufrag.All(IsIceChar) && password.All(IsIceChar) ? new IceCredentials(ufrag, password) : null;

    private static bool IsIceChar(char c) => Alphabet.Contains(c, StringComparison.Ordinal);
}
