"""The GraphQL API: the same services as REST, another front door."""
