using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;

namespace Ferry.Connector.Flows;

/// <summary>The connector host's own resolver (getaddrinfo: /etc/hosts, then the host's DNS servers).</summary>
public sealed class SystemNameResolver : INameResolver
{
    public static SystemNameResolver Instance { get; } = new();

    public async Task<NameResolution> ResolveAsync(string name, CancellationToken cancellationToken)
    {
        try
        {
            var addresses = await Dns.GetHostAddressesAsync(name, cancellationToken);
            return addresses.Length == 0
                ? NameResolution.Failed(FlowStatus.NameNotFound, $"'{name}' has no addresses on the connector host")
                : NameResolution.Found(addresses);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.HostNotFound or SocketError.NoData)
        {
            return NameResolution.Failed(FlowStatus.NameNotFound, $"'{name}' does not resolve on the connector host: {e.Message}");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.TryAgain)
        {
            return NameResolution.Failed(FlowStatus.Unreachable, $"the connector host's DNS did not answer for '{name}' ({e.Message}); check its resolver configuration");
        }
        catch (SocketException e)
        {
            return NameResolution.Failed(FlowStatus.Unreachable, $"resolving '{name}' on the connector host failed: {e.Message}");
        }
    }
}
