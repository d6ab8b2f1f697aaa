using System.Net;
using DnsClient;
using Ferry.Core.Flows;

namespace Ferry.Connector.Flows;

/// <summary>Resolves through one configured DNS server (the network's or connector's custom DNS), asking for A and AAAA records at once.</summary>
public sealed class DnsServerResolver : INameResolver
{
    private readonly LookupClient _client;
    private readonly IPEndPoint _server;

    /// <param name="server">The DNS server, e.g. 10.0.0.2:53.</param>
    /// <param name="timeout">How long one query may wait for an answer; default 3 s (one retry follows).</param>
    public DnsServerResolver(IPEndPoint server, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(server);
        _server = server;
        _client = new LookupClient(new LookupClientOptions(new[] { server })
        {
            UseCache = true,
            Timeout = timeout ?? TimeSpan.FromSeconds(3),
            Retries = 1,
            ThrowDnsErrors = false,
            UseTcpFallback = true,
        });
    }

    public async Task<NameResolution> ResolveAsync(string name, CancellationToken cancellationToken)
    {
        try
        {
            var responses = await Task.WhenAll(
                _client.QueryAsync(name, QueryType.A, QueryClass.IN, cancellationToken),
                _client.QueryAsync(name, QueryType.AAAA, QueryClass.IN, cancellationToken));
            // IPv4 first: private networks are far more often reachable over it.
            var addresses = responses[0].Answers.ARecords().Select(r => r.Address)
                .Concat(responses[1].Answers.AaaaRecords().Select(r => r.Address))
                .ToArray();
            if (addresses.Length > 0)
            {
                return NameResolution.Found(addresses);
            }
            if (responses.Any(r => r.Header.ResponseCode == DnsHeaderResponseCode.NotExistentDomain))
            {
                return NameResolution.Failed(FlowStatus.NameNotFound, $"DNS server {_server} says '{name}' does not exist (NXDOMAIN)");
            }
            var failed = Array.Find(responses, r => r.HasError);
            if (failed is not null)
            {
                return NameResolution.Failed(FlowStatus.Unreachable, $"DNS server {_server} could not resolve '{name}': {failed.ErrorMessage}");
            }
            return NameResolution.Failed(FlowStatus.NameNotFound, $"'{name}' has no A or AAAA records at DNS server {_server}");
        }
        catch (DnsResponseException e) when (e.Code == DnsResponseCode.ConnectionTimeout)
        {
            return NameResolution.Failed(FlowStatus.Timeout, $"DNS server {_server} did not answer for '{name}'");
        }
        catch (DnsResponseException e)
        {
            return NameResolution.Failed(FlowStatus.Unreachable, $"DNS server {_server} could not be asked about '{name}': {e.DnsError}");
        }
    }
}
