using System.Net;

namespace Ferry.Core.Flows;

/// <summary>Destinations on or next to the connector host itself (loopback, link-local, unspecified, cloud metadata) that only an explicit IP or CIDR resource may reach.</summary>
public static class SpecialAddresses
{
    // Most specific first, so the metadata service is named as such rather than as link-local.
    private static readonly AddressBlock[] Blocks =
    [
        new(IPAddress.Parse("169.254.169.254"), 32, "the cloud metadata service"),
        new(IPAddress.Parse("fd00:ec2::254"), 128, "the cloud metadata service"),
        new(IPAddress.Parse("127.0.0.0"), 8, "a loopback address"),
        new(IPAddress.IPv6Loopback, 128, "a loopback address"),
        // Connecting to 0.0.0.0 or :: reaches the connector host's own listeners on Linux.
        new(IPAddress.Parse("0.0.0.0"), 8, "an unspecified ('this host') address"),
        new(IPAddress.IPv6Any, 128, "an unspecified ('this host') address"),
        new(IPAddress.Parse("169.254.0.0"), 16, "a link-local address"),
        new(IPAddress.Parse("fe80::"), 10, "a link-local address"),
    ];

    /// <summary>Whether <paramref name="address"/> is special; <paramref name="what"/> describes it ("a loopback address") and <paramref name="block"/> is the range it falls in.</summary>
    public static bool IsSpecial(IPAddress address, out string what, out string block)
    {
        ArgumentNullException.ThrowIfNull(address);
        var ip = Normalise(address);
        foreach (var b in Blocks)
        {
            if (b.Contains(ip))
            {
                what = b.Description;
                block = $"{b.Network}/{b.Prefix}";
                return true;
            }
        }
        what = "";
        block = "";
        return false;
    }

    /// <summary>True when the range <paramref name="network"/>/<paramref name="prefix"/> lies wholly inside the special block that holds <paramref name="address"/>.</summary>
    internal static bool IsExplicitlyCovered(IPAddress address, IPAddress network, int prefix)
    {
        var ip = Normalise(address);
        var net = Normalise(network);
        foreach (var b in Blocks)
        {
            if (b.Contains(ip))
            {
                return prefix >= b.Prefix && b.Contains(net);
            }
        }
        return true;
    }

    internal static IPAddress Normalise(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
}

/// <summary>An address range with a description for messages.</summary>
internal sealed record AddressBlock(IPAddress Network, int Prefix, string Description)
{
    public bool Contains(IPAddress ip)
    {
        if (ip.AddressFamily != Network.AddressFamily)
        {
            return false;
        }
        Span<byte> a = stackalloc byte[16];
        Span<byte> n = stackalloc byte[16];
        ip.TryWriteBytes(a, out var length);
        Network.TryWriteBytes(n, out _);
        for (var i = 0; i < length; i++)
        {
            var bits = Math.Clamp(Prefix - (i * 8), 0, 8);
            var mask = (byte)(0xFF << (8 - bits));
            if ((a[i] & mask) != (n[i] & mask))
            {
                return false;
            }
        }
        return true;
    }
}

/// <summary>
/// Which destinations count as public: everything outside the private-use ranges (RFC 1918, RFC 6598 shared space, unique
/// local IPv6) and the host-local ones. Only connectors of an exit network reach public destinations.
/// </summary>
public static class PublicAddresses
{
    private static readonly AddressBlock[] NonPublic =
    [
        new(IPAddress.Parse("10.0.0.0"), 8, "private"),
        new(IPAddress.Parse("172.16.0.0"), 12, "private"),
        new(IPAddress.Parse("192.168.0.0"), 16, "private"),
        new(IPAddress.Parse("100.64.0.0"), 10, "shared address space"),
        new(IPAddress.Parse("127.0.0.0"), 8, "loopback"),
        new(IPAddress.Parse("169.254.0.0"), 16, "link-local"),
        new(IPAddress.Parse("0.0.0.0"), 8, "this host"),
        new(IPAddress.Parse("fc00::"), 7, "unique local"),
        new(IPAddress.Parse("fe80::"), 10, "link-local"),
        new(IPAddress.IPv6Loopback, 128, "loopback"),
        new(IPAddress.IPv6Any, 128, "this host"),
    ];

    /// <summary>Whether <paramref name="address"/> lies outside every private and host-local range.</summary>
    public static bool IsPublic(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        var ip = SpecialAddresses.Normalise(address);
        return !Array.Exists(NonPublic, b => b.Contains(ip));
    }

    /// <summary>Whether any address of the range <paramref name="network"/>/<paramref name="prefix"/> is public.</summary>
    public static bool ReachesPublic(IPAddress network, int prefix)
    {
        ArgumentNullException.ThrowIfNull(network);
        var net = SpecialAddresses.Normalise(network);
        // A range is private only when it lies wholly inside one non-public block.
        return !Array.Exists(NonPublic, b => prefix >= b.Prefix && b.Contains(net));
    }
}
