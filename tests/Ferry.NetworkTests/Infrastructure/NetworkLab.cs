using Ferry.IntegrationTests.Infrastructure;
using System.Diagnostics;
using System.Security.Cryptography;

namespace Ferry.NetworkTests.Infrastructure;

/// <summary>
/// Hosts and routers as Linux network namespaces joined by veth pairs, with NAT rules on the routers. Every name carries
/// a random prefix, only addresses inside the namespaces are used, and everything is deleted on dispose, even after a failure.
/// </summary>
public sealed class NetworkLab : IAsyncDisposable
{
    private readonly List<string> _namespaces = [];
    private readonly List<string> _etcDirectories = [];
    private readonly string _prefix = "fy" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(3));
    private int _links;

    /// <summary>Skips the calling test, saying why, where namespaces cannot be made.</summary>
    public static void RequireAvailable()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Skip("network tests need Linux network namespaces");
        }
        if (Environment.UserName != "root" && Environment.GetEnvironmentVariable("USER") != "root" && GetEuid() != 0)
        {
            Assert.Skip("network tests need root (ip netns, veth, iptables); CI runs them as root");
        }
        foreach (var tool in new[] { "ip", "iptables" })
        {
            if (!File.Exists($"/usr/sbin/{tool}") && !File.Exists($"/sbin/{tool}") && !File.Exists($"/usr/bin/{tool}"))
            {
                Assert.Skip($"network tests need '{tool}' (Debian packages iproute2 and iptables)");
            }
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "geteuid")]
#pragma warning disable CA5392, SYSLIB1054 // libc from the system directory; a one-off call.
    private static extern uint GetEuid();
#pragma warning restore CA5392, SYSLIB1054

    /// <summary>Creates a namespace (a host or a router) with its loopback up; returns its full name.</summary>
    public async Task<string> HostAsync(string role)
    {
        var name = $"{_prefix}-{role}";
        await RunAsync("ip", "netns", "add", name);
        _namespaces.Add(name);
        await RunAsync("ip", "-n", name, "link", "set", "lo", "up");
        return name;
    }

    /// <summary>Joins two namespaces with a veth pair and gives each end an address (CIDR form); returns the interface names.</summary>
    public async Task<(string A, string B)> LinkAsync(string nsA, string addressA, string nsB, string addressB)
    {
        var n = Interlocked.Increment(ref _links);
        var (ifA, ifB) = ($"{_prefix}a{n}", $"{_prefix}b{n}");
        await RunAsync("ip", "link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB);
        await RunAsync("ip", "-n", nsA, "addr", "add", addressA, "dev", ifA);
        await RunAsync("ip", "-n", nsB, "addr", "add", addressB, "dev", ifB);
        await RunAsync("ip", "-n", nsA, "link", "set", ifA, "up");
        await RunAsync("ip", "-n", nsB, "link", "set", ifB, "up");
        return (ifA, ifB);
    }

    /// <summary>A switch inside <paramref name="ns"/>: a bridge holding <paramref name="address"/> (CIDR form), for hosts to join with <see cref="JoinBridgeAsync"/>; returns its name.</summary>
    public async Task<string> BridgeAsync(string ns, string address)
    {
        var bridge = $"{_prefix}br{Interlocked.Increment(ref _links)}";
        await RunAsync("ip", "-n", ns, "link", "add", bridge, "type", "bridge");
        await RunAsync("ip", "-n", ns, "addr", "add", address, "dev", bridge);
        await RunAsync("ip", "-n", ns, "link", "set", bridge, "up");
        return bridge;
    }

    /// <summary>Plugs namespace <paramref name="host"/> into a bridge made by <see cref="BridgeAsync"/> with a veth pair; returns the host's interface name.</summary>
    public async Task<string> JoinBridgeAsync(string bridgeNs, string bridge, string host, string hostAddress)
    {
        var n = Interlocked.Increment(ref _links);
        var (port, ifHost) = ($"{_prefix}p{n}", $"{_prefix}h{n}");
        await RunAsync("ip", "link", "add", port, "netns", bridgeNs, "type", "veth", "peer", "name", ifHost, "netns", host);
        await RunAsync("ip", "-n", bridgeNs, "link", "set", port, "master", bridge);
        await RunAsync("ip", "-n", host, "addr", "add", hostAddress, "dev", ifHost);
        await RunAsync("ip", "-n", bridgeNs, "link", "set", port, "up");
        await RunAsync("ip", "-n", host, "link", "set", ifHost, "up");
        return ifHost;
    }

    /// <summary>
    /// Writes /etc/netns/<paramref name="ns"/>/<paramref name="file"/>: 'ip netns exec' bind-mounts every file there over
    /// /etc/<paramref name="file"/> for the programs it starts in that namespace (processes started afterwards see it; this
    /// test process never does). The folder is removed on dispose.
    /// </summary>
    public async Task EtcFileAsync(string ns, string file, string content)
    {
        var directory = Path.Combine("/etc/netns", ns);
        if (!_etcDirectories.Contains(directory))
        {
            Directory.CreateDirectory(directory);
            _etcDirectories.Add(directory);
        }
        await File.WriteAllTextAsync(Path.Combine(directory, file), content);
    }

    public Task DefaultRouteAsync(string ns, string via) => RunAsync("ip", "-n", ns, "route", "add", "default", "via", via);

    /// <summary>
    /// Makes <paramref name="router"/> a home-router NAT on <paramref name="wan"/>: plain MASQUERADE maps endpoint-independently,
    /// --random-fully maps per destination (symmetric); unsolicited packets on the WAN side are dropped, as home routers do.
    /// </summary>
    public async Task NatAsync(string router, string wan, bool symmetric = false)
    {
        await RunAsync("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1");
        var masquerade = new List<string> { "netns", "exec", router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", wan, "-j", "MASQUERADE" };
        if (symmetric)
        {
            masquerade.Add("--random-fully");
        }
        await RunAsync("ip", [.. masquerade]);
        await RunAsync("ip", "netns", "exec", router, "iptables", "-A", "INPUT", "-i", wan, "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP");
    }

    /// <summary>curl inside namespace <paramref name="ns"/>, bounded to 30 s (45 s for the process).</summary>
    public static Task<CommandResult> CurlAsync(string ns, string[] args, CancellationToken ct)
        => ExternalProcess.CaptureAsync("ip", ["netns", "exec", ns, "curl", "-sS", "--max-time", "30", .. args], TimeSpan.FromSeconds(45), ct);

    public static async Task RunAsync(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        using var process = Process.Start(info)!;
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await process.WaitForExitAsync(timeout.Token);
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({process.ExitCode}): {await process.StandardError.ReadToEndAsync(timeout.Token)}");
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var directory in _etcDirectories)
        {
            try
            {
                Directory.Delete(directory, recursive: true);
            }
            catch (DirectoryNotFoundException)
            {
                // Already gone.
            }
        }
        if (_etcDirectories.Count > 0)
        {
            try
            {
                // /etc/netns itself only while nothing else uses it.
                Directory.Delete("/etc/netns", recursive: false);
            }
            catch (IOException)
            {
            }
        }
        foreach (var ns in Enumerable.Reverse(_namespaces))
        {
            try
            {
                // Deleting a namespace removes its veth ends, routes and iptables rules with it.
                await RunAsync("ip", "netns", "del", ns);
            }
            catch (InvalidOperationException)
            {
                // Already gone; nothing of ours is left in it.
            }
        }
    }
}
