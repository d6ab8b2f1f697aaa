using System.Text;

namespace Ferry.Stun;

/// <summary>Helpers for STUN credentials.</summary>
public static class StunCredentials
{
    /// <summary>
    /// The short-term credential key: the password in UTF-8. RFC 8489 asks for OpaqueString
    /// preparation first; Ferry generates its ICE passwords from ASCII, where that is the identity.
    /// </summary>
    public static byte[] ShortTermKey(string password)
    {
        ArgumentNullException.ThrowIfNull(password);
        return Encoding.UTF8.GetBytes(password);
    }
}
