using System.Net;

namespace Ferry.Core.Flows;

/// <summary>Destinations on or next to the connector host itself (loopback, link-local, unspecified, cloud metadata) that only an explicit IP or CIDR resource may reach.</summary>
public static class SpecialAddresses
{
    // Most specific first, so the metadata service is named as such rather than as link-local.
    private static readonly Block[] Blocks =
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

    private sealed record Block(IPAddress Network, int Prefix, string Description)
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
}
