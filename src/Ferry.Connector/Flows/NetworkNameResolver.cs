using System.Net;

namespace Ferry.Connector.Flows;

/// <summary>
/// Resolves with the DNS server the controller configures for the connector's network, or the host's resolver when there is
/// none. A server given on the connector's command line wins over the network's, since it is the more specific setting.
/// </summary>
public sealed class NetworkNameResolver : INameResolver
{
    private readonly IPEndPoint? _pinned;
    private volatile INameResolver _current;
    private IPEndPoint? _networkServer;

    public NetworkNameResolver(IPEndPoint? connectorServer)
    {
        _pinned = connectorServer;
        _current = connectorServer is null ? SystemNameResolver.Instance : new DnsServerResolver(connectorServer);
    }

    /// <summary>The server names go to now, or null for the connector host's own resolver.</summary>
    public IPEndPoint? Server => _pinned ?? _networkServer;

    /// <summary>Applies the network's DNS setting ("10.0.0.2" or "10.0.0.2:53", null for none); returns false when it is unusable, with the reason.</summary>
    public bool UseNetworkServer(string? setting, out string problem)
    {
        problem = "";
        IPEndPoint? server = null;
        if (!string.IsNullOrWhiteSpace(setting))
        {
            var text = setting.Trim();
            if (!IPEndPoint.TryParse(text, out server))
            {
                problem = $"the network's DNS server '{setting}' is not an IP address or IP:port; names resolve on the connector host instead";
            }
            else if (server.Port == 0)
            {
                // A bare address means the standard DNS port.
                server.Port = 53;
            }
        }
        if (Equals(server, _networkServer))
        {
            return problem.Length == 0;
        }
        _networkServer = server;
        if (_pinned is null)
        {
            _current = server is null ? SystemNameResolver.Instance : new DnsServerResolver(server);
        }
        return problem.Length == 0;
    }

    public Task<NameResolution> ResolveAsync(string name, CancellationToken cancellationToken) => _current.ResolveAsync(name, cancellationToken);
}
