using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Reflection;

namespace Ferry.Core.ControlPlane;

/// <summary>What a daemon reports about its host: name, every private address, and Ferry's version.</summary>
public static class HostFacts
{
    public static string Hostname => Environment.MachineName;

    public static string Version { get; } =
        typeof(HostFacts).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0.0.0";

    /// <summary>Every unicast address of every interface that is up, except loopback and IPv6 link-local.</summary>
    public static string[] PrivateIps()
    {
        var result = new List<string>();
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            if (nic.OperationalStatus is not (OperationalStatus.Up or OperationalStatus.Unknown) || nic.NetworkInterfaceType == NetworkInterfaceType.Loopback)
            {
                continue;
            }
            foreach (var address in nic.GetIPProperties().UnicastAddresses)
            {
                var ip = address.Address;
                if (System.Net.IPAddress.IsLoopback(ip) || (ip.AddressFamily == AddressFamily.InterNetworkV6 && ip.IsIPv6LinkLocal))
                {
                    continue;
                }
                result.Add(ip.ToString());
            }
        }
        return [.. result.Distinct()];
    }
}

/// <summary>A clock shifted by a fixed offset; only for tests that need a daemon whose clock is wrong.</summary>
public sealed class SkewedTimeProvider(TimeSpan skew) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => System.GetUtcNow() + skew;
}
